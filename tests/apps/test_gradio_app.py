"""The web app's handlers (and the page built on them), called directly (no browser): inputs, errors, streaming,
stopping, saved recipes."""

from __future__ import annotations

import shlex
import textwrap
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gradio as gr
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from apps.gradio_app import build_app, build_parser, main
from apps.handlers import (DIRECTIONAL_EDIT, INIT_IMAGE_EDIT, LOCALISED_EDIT, MASKED_EDIT, RUNS, AppConfig,
                           PipelineCache, Preview, WebApp, check_size, error_message, merge_negative_prompt, seed_of,
                           stream_pipeline)
from apps.model_policy import ModelPolicy
from guidance.errors import InvalidInputError
from guidance.images import read_recipe
from guidance.prompts import parse_prompts
from pipelines import clip_guided_diffusion, registry
from pipelines.common import run_cli
from pipelines.noise_optimization import NoiseOptimizationPipeline
from pipelines.pixels_clip import PixelsCLIPPipeline
from pipelines.registry import get_pipeline_spec, pipeline_names
from pipelines.vqgan_clip import VQGANCLIPPipeline

PREVIEW, STATUS, GALLERY, FILES, SEED, RESULTS = range(6)
VQGAN_CLIP, PIXELS_CLIP, DIFFUSION, NOISE = ("vqgan_clip", "pixels_clip", "clip_guided_diffusion",
                                             "noise_optimization")  # registry names
PIXELS_RGB = ModelPolicy.build({PIXELS_CLIP: ["rgb"]})  # the shipped models and Pixels-CLIP's raw-RGB form


@pytest.fixture(scope="module")
def app(tmp_path_factory) -> WebApp:
    """The handlers on CPU with a shared model cache (each method's tiny models load once for the module)."""
    return WebApp(AppConfig(device="cpu", max_size=128, max_upload_pixels=128 * 128,
                            output_dir=tmp_path_factory.mktemp("app-results"), models=PIXELS_RGB),
                  PipelineCache(capacity=3))


def session(name: str = "test") -> SimpleNamespace:
    """A stand-in for gr.Request: the handlers only read the session hash."""
    return SimpleNamespace(session_hash=name)


def generate(app: WebApp, prompt: str = "a red circle", request: Any = None, **overrides: Any):
    """The text-to-image handler with tiny settings on the shapes-tiny models (a generator of outputs)."""
    args = dict(prompt=prompt, negative="", method=VQGAN_CLIP, model="shapes-tiny", clip_models=["shapes-tiny"],
                size="64", steps=4, cutn=4, num_images=1, seed=3, random_seed=False, lr=None, cut_pow=None,
                augment=None,
                clip_scale=None, tv_scale=None, range_scale=None, cfg_scale=None, sampler_steps=None,
                spectrum_decay=None, precision="fp32", results=[])
    return app.generate(**{**args, **overrides}, request=request or session())


def edit(app: WebApp, editor: dict[str, Any], request: Any = None, **overrides: Any):
    """The edit handler with tiny settings on the shapes-tiny models (a generator of outputs)."""
    args = dict(mask_file=None, target="a blue circle", source="", edit_method=MASKED_EDIT, method=VQGAN_CLIP,
                model="shapes-tiny", clip_models=["shapes-tiny"], steps=4, cutn=4,
                edit_strength=0.5, seed=1, random_seed=False, lr=None, cut_pow=None, augment="default",
                clip_scale=None, tv_scale=None, range_scale=None, cfg_scale=None, sampler_steps=None,
                spectrum_decay=None, precision="fp32", results=[])
    return app.edit(editor, **{**args, **overrides}, request=request or session())


def last_outputs(handler) -> tuple:
    """Run a handler to the end; its final outputs."""
    outputs = None
    for outputs in handler:
        pass
    return outputs


def error_of(handler) -> tuple[str, list[tuple]]:
    """Run a handler that fails: the gr.Error's message and the outputs it yielded before."""
    seen = []
    with pytest.raises(gr.Error) as caught:
        for outputs in handler:
            seen.append(outputs)
    return caught.value.message, seen


def photo_editor(folder: Path, painted: tuple[int, int, int, int] | None = (8, 8, 24, 24),
                 size: int = 48) -> dict[str, Any]:
    """An ImageEditor value as the page hands it over: files of a red disc on grey and of a layer with the
    painted box (RGBA, alpha = paint)."""
    background = Image.new("RGBA", (size, size), (128, 128, 128, 255))
    ImageDraw.Draw(background).ellipse((size // 4, size // 4, 3 * size // 4, 3 * size // 4), fill=(220, 30, 30, 255))
    layer = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    if painted:
        ImageDraw.Draw(layer).rectangle(painted, fill=(255, 48, 48, 255))
    folder.mkdir(parents=True, exist_ok=True)
    background.save(folder / "photo.png")
    layer.save(folder / "layer.png")
    return {"background": str(folder / "photo.png"), "layers": [str(folder / "layer.png")],
            "composite": str(folder / "photo.png")}


# --- inputs ---------------------------------------------------------------------------------------------------


def test_negative_prompt_items_are_appended_with_negative_weights():
    merged = merge_negative_prompt("a red circle:2", "blue | a green square:0.5 | a clock at 10:30")
    assert merged == "a red circle:2|blue:-1|a green square:-0.5|a clock at 10:30 :-1"
    assert [(p.text, p.weight) for p in parse_prompts(merged)] == [
        ("a red circle", 2.0), ("blue", -1.0), ("a green square", -0.5), ("a clock at 10:30", -1.0)]


def test_negative_prompt_keeps_stops_and_may_be_empty():
    assert merge_negative_prompt("a red circle", "  ") == "a red circle"
    assert parse_prompts(merge_negative_prompt("a", "b:-2:0.3"))[1] == parse_prompts("b:-2:0.3")[0]
    with pytest.raises(InvalidInputError, match="empty"):
        merge_negative_prompt("a red circle", "blue||green")


def test_sizes_above_the_limit_are_refused():
    assert check_size("", 128) is None
    assert check_size("96x64", 128) == (96, 64)
    with pytest.raises(InvalidInputError, match=r"larger than this server allows \(128 pixels a side\); use a smaller"):
        check_size("256", 128)
    with pytest.raises(InvalidInputError, match="WIDTHxHEIGHT"):
        check_size("big", 128)


def test_seed_is_fresh_when_random_is_ticked():
    assert seed_of(7, False) == 7
    assert seed_of(None, False) >= 0
    assert len({seed_of(7, True) for _ in range(5)}) > 1


def test_unexpected_errors_read_as_one_line(caplog):
    assert "out of memory" in error_message(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    message = error_message(KeyError("boom\nsecond line"))
    assert message.startswith("unexpected error (KeyError:") and "\n" not in message
    assert "Traceback" not in message


# --- running --------------------------------------------------------------------------------------------------


def test_cache_loads_each_pipeline_once_and_drops_the_oldest():
    loads = []
    cache = PipelineCache(capacity=2, loader=lambda *key: loads.append(key) or object())
    device = torch.device("cpu")
    first = cache.get(VQGAN_CLIP, "a", ["c"], device)
    assert cache.get(VQGAN_CLIP, "a", ["c"], device) is first
    cache.get(DIFFUSION, "b", ["c"], device)
    cache.get(DIFFUSION, "d", ["c"], device)  # evicts the VQGAN one
    cache.get(VQGAN_CLIP, "a", ["c"], device)
    assert len(loads) == 4 and len(cache) == 2


def test_stream_yields_the_newest_preview_then_the_output_and_raises_run_errors():
    first_shown, queued, newest_shown = threading.Event(), threading.Event(), threading.Event()

    def run(callback):
        callback(1, torch.zeros(1, 3, 4, 4))
        first_shown.wait(timeout=10)
        for step in (2, 3, 4):  # arrive while the page is busy: only the newest is shown
            callback(step, torch.ones(1, 3, 4, 4))
        queued.set()
        newest_shown.wait(timeout=10)
        return "output"

    events = []
    for event in stream_pipeline(run, threading.Event()):
        events.append(event)
        if isinstance(event, Preview) and event.step == 1:
            first_shown.set()
            queued.wait(timeout=10)
        elif isinstance(event, Preview):
            newest_shown.set()
    assert [event.step for event in events[:-1]] == [1, 4] and events[-1] == "output"
    assert events[1].image.size == (4, 4) and events[1].image.getpixel((0, 0)) == (255, 255, 255)

    def broken(callback):
        raise InvalidInputError("bad input")

    with pytest.raises(InvalidInputError, match="bad input"):
        list(stream_pipeline(broken, threading.Event()))


def test_leaving_a_stream_early_stops_the_run_and_waits_for_it():
    stop, finished = threading.Event(), threading.Event()

    def run(callback):
        while not callback(1, torch.zeros(1, 3, 4, 4)):
            pass
        finished.set()

    stream = stream_pipeline(run, stop)
    assert isinstance(next(stream), Preview)
    stream.close()
    assert stop.is_set() and finished.is_set()


def test_generate_streams_previews_and_saves_the_png_with_its_recipe(app):
    outputs = list(generate(app, "a red circle", negative="blue", steps=4))
    previews = [o[PREVIEW] for o in outputs[:-1] if isinstance(o[PREVIEW], Image.Image)]
    assert previews, "no intermediate image was streamed"
    final = outputs[-1]
    assert "Done: 4 steps" in final[STATUS]
    path = Path(final[FILES][0])
    assert final[GALLERY] == final[RESULTS] == [str(path)]
    recipe = read_recipe(path)
    assert recipe["prompt"] == "a red circle|blue:-1" and recipe["seed"] == 3 and recipe["steps_done"] == 4
    assert recipe["vqgan"] == "shapes-tiny" and recipe["clip_models"] == ["shapes-tiny:1"]
    assert recipe["command"].startswith("python -m pipelines.vqgan_clip 'a red circle|blue:-1' --vqgan shapes-tiny")
    assert "--seed 3" in recipe["command"] and "--size 64x64" in recipe["command"]
    assert Image.open(path).size == (64, 64)


def test_guided_diffusion_runs_on_the_shipped_shapes_ddpm(app):
    final = last_outputs(generate(app, "a red circle", method=DIFFUSION, size="", steps=4))
    assert "Done: 4 steps" in final[STATUS]
    recipe = read_recipe(final[FILES][0])
    assert recipe["model"] == "shapes-tiny" and recipe["size"] == "32x32" and recipe["clip_models"] == ["shapes-tiny:1"]
    assert recipe["command"].startswith("python -m pipelines.clip_guided_diffusion 'a red circle' --model shapes-tiny")
    assert Image.open(final[FILES][0]).size == (32, 32)


@pytest.mark.slow
def test_a_chinese_prompt_with_the_bilingual_clip_gives_its_colour(app):
    """The app passes Chinese through to the shipped bilingual CLIP: 一个红色的圆形 gives red (pixel judge) for most
    seeds, and the recipe's command quotes the prompt so that it reruns."""
    from training.colour_stats import dominant_colour

    finals = [last_outputs(generate(app, "一个红色的圆形", clip_models=["shapes-tiny-zh"], steps=100, cutn=16, seed=seed))
              for seed in (0, 1, 2)]
    found = [dominant_colour(Image.open(final[FILES][0])) for final in finals]
    assert found.count("red") >= 2, found
    recipe = read_recipe(finals[0][FILES][0])
    assert recipe["prompt"] == "一个红色的圆形" and recipe["clip_models"] == ["shapes-tiny-zh:1"]
    assert recipe["command"].startswith("python -m pipelines.vqgan_clip '一个红色的圆形' --vqgan shapes-tiny "
                                         "--clip-model shapes-tiny-zh")


def test_random_seed_is_shown_and_recorded(app):
    outputs = list(generate(app, steps=1, seed=None, random_seed=True))
    shown = [o[SEED] for o in outputs if isinstance(o[SEED], int)]
    assert len(shown) == 1 and read_recipe(outputs[-1][FILES][0])["seed"] == shown[0]


def test_results_accumulate_newest_first(app):
    first = last_outputs(generate(app, steps=1))
    second = last_outputs(generate(app, "a blue square", steps=1, results=first[RESULTS]))
    assert second[GALLERY] == [second[FILES][0], first[FILES][0]]


def test_stop_ends_the_run_early_and_keeps_the_last_image(app):
    request = session("stopper")
    handler = generate(app, steps=200, request=request)
    for outputs in handler:
        if isinstance(outputs[PREVIEW], Image.Image):
            app.stop(request)
            break
    final = last_outputs(handler)
    assert final[STATUS].startswith("Stopped after")
    recipe = read_recipe(final[FILES][0])
    assert 1 <= recipe["steps_done"] < 200 and recipe["steps"] == 200
    assert Image.open(final[FILES][0]).size == (64, 64)


def test_stop_of_another_session_does_not_touch_a_run(app):
    handler = generate(app, steps=3, request=session("mine"))
    next(handler)
    app.stop(session("someone-else"))
    assert "Done: 3 steps" in last_outputs(handler)[STATUS]


@pytest.mark.parametrize("overrides, message", [
    ({"prompt": "   "}, "the prompt is empty"),
    ({"size": "512"}, "larger than this server allows"),
    ({"prompt": "a red circle:"}, "empty weight"),
    ({"clip_models": []}, "no CLIP model chosen"),
    ({"model": "no-such-vqgan"}, "VQGAN 'no-such-vqgan' is not offered by this server; pick one of shapes-tiny"),
    ({"model": " "}, "no VQGAN chosen; pick one, e.g. shapes-tiny"),
    ({"steps": 5000}, "5000 steps is over this server's limit of 1000; use at most 1000 (its operator sets "
                      "--max-steps)"),
    ({"cutn": 129}, "129 cutouts is over this server's limit of 128"),
    ({"num_images": 9}, "9 images is over this server's limit of 4"),
    ({"steps": 0.5}, "steps must be a whole number from 1 to 1000, got 0.5"),
    ({"lr": float("nan")}, "learning rate must be a finite number, got nan"),
    ({"method": "no-such-method"}, "unknown pipeline 'no-such-method'"),
    ({"precision": "fp16"}, "fp16 needs a GPU"),
])
def test_bad_input_shows_one_line_and_the_app_keeps_serving(app, overrides, message):
    error, seen = error_of(generate(app, **overrides))
    assert message in error and "Traceback" not in error and "\n" not in error
    assert message in seen[-1][STATUS]
    assert "Done" in last_outputs(generate(app, steps=1))[STATUS]


def test_missing_weights_of_a_listed_model_report_how_to_get_them(app):
    listing = WebApp(AppConfig(device="cpu", output_dir=app.config.output_dir,
                               models=ModelPolicy.build({DIFFUSION: ["./no-such-model"]})), app.cache)
    error, _ = error_of(generate(listing, method=DIFFUSION, model="./no-such-model"))
    assert "diffusion model './no-such-model' is neither a folder" in error
    assert "pass a local diffusers folder instead: --model path/to/folder" in error


# --- the methods come from the pipeline registry -----------------------------------------------------------


def page_components(blocks: gr.Blocks) -> dict[str, Any]:
    """The page's components by their elem_id."""
    return {block.elem_id: block for block in blocks.blocks.values() if getattr(block, "elem_id", None)}


def test_method_lists_are_the_registry_titles_and_the_model_picker_follows(tmp_path):
    titles = [get_pipeline_spec(name).title for name in pipeline_names()]
    assert "Pixels-CLIP" in titles
    blocks = build_app(AppConfig(device="cpu", output_dir=tmp_path))
    components = page_components(blocks)
    for tab in ("generate", "edit"):
        method, model = components[f"{tab}-method"], components[f"{tab}-model"]
        assert [label for label, _ in method.choices] == titles
        assert [value for _, value in method.choices] == pipeline_names() and method.value == pipeline_names()[0]
        first = get_pipeline_spec(pipeline_names()[0])
        assert model.value == first.offline_models[0] and model.label == first.model_label
    assert sum(fn.name == "model_picker_update" for fn in blocks.fns.values()) == 2  # one per tab
    app = WebApp(AppConfig(device="cpu", output_dir=tmp_path, models=PIXELS_RGB))
    pixels = app.model_picker_update(PIXELS_CLIP)
    assert pixels["choices"] == ["fft", "rgb"] and pixels["value"] == "fft" and pixels["label"] == "Parameterization"
    assert app.model_picker_update(DIFFUSION)["choices"] == ["shapes-tiny-text", "shapes-tiny"]


def test_advanced_fields_start_empty_and_show_the_pipelines_defaults(tmp_path):
    components = page_components(build_app(AppConfig(device="cpu", output_dir=tmp_path)))
    for option in ("lr", "cut-pow", "augment", "clip-scale", "tv-scale", "range-scale", "cfg-scale", "sampler-steps",
                   "spectrum-decay"):
        assert components[f"generate-{option}"].value is None and components[f"edit-{option}"].value is None
    lr = components["generate-lr"].info
    assert f"{VQGANCLIPPipeline.default_lr:g} (VQGAN-CLIP)" in lr
    assert f"{PixelsCLIPPipeline.default_lr:g} (Pixels-CLIP)" in lr
    assert f"{NoiseOptimizationPipeline.default_lr:g} (Noise optimisation (diffusion))" in lr
    assert lr.startswith("VQGAN-CLIP and Pixels-CLIP and Noise optimisation (diffusion) only")
    assert components["generate-clip-scale"].info == (f"CLIP-guided diffusion only; "
                                                      f"empty: {clip_guided_diffusion.DEFAULT_CLIP_SCALE:g}")
    assert components["edit-strength"].value == clip_guided_diffusion.DEFAULT_EDIT_STRENGTH
    assert components["edit-strength"].label == "Edit strength (CLIP-guided diffusion)"


def test_pixels_clip_runs_end_to_end_on_the_shipped_clip(app):
    outputs = list(generate(app, "a red circle", method=PIXELS_CLIP, model="fft", size="32", steps=4, cutn=4))
    assert any(isinstance(o[PREVIEW], Image.Image) for o in outputs[:-1]), "no intermediate image was streamed"
    final = outputs[-1]
    assert "Done: 4 steps" in final[STATUS]
    recipe = read_recipe(final[FILES][0])
    assert recipe["pipeline"] == "pixels_clip" and recipe["parameterization"] == "fft" and recipe["size"] == "32x32"
    assert recipe["command"].startswith("python -m pipelines.pixels_clip 'a red circle' --parameterization fft "
                                        "--clip-model shapes-tiny")
    assert Image.open(final[FILES][0]).size == (32, 32)


def test_noise_optimisation_runs_end_to_end_on_the_shipped_models(app):
    final = last_outputs(generate(app, "a red circle", method=NOISE, model="shapes-tiny", size="32", steps=2,
                                  cutn=4))
    assert "Done: 2 steps" in final[STATUS]
    recipe = read_recipe(final[FILES][0])
    assert recipe["pipeline"] == "noise_optimization" and recipe["model"] == "shapes-tiny"
    assert recipe["sampler_steps"] == 4 and recipe["candidates"] == 32 and recipe["optimizer"] == "nesterov"
    assert recipe["command"].startswith("python -m pipelines.noise_optimization 'a red circle' --model shapes-tiny "
                                        "--clip-model shapes-tiny")
    assert Image.open(final[FILES][0]).size == (32, 32)


def test_options_set_when_a_method_loads_reach_its_loader_recipe_and_command(app):
    final = last_outputs(generate(app, "a red circle", method=NOISE, model="shapes-tiny-text", size="32", steps=2,
                                  cutn=4, sampler_steps=2.0, cfg_scale=2.0))
    recipe = read_recipe(final[FILES][0])
    assert recipe["sampler_steps"] == 2 and recipe["cfg_scale"] == 2.0
    command = shlex.split(recipe["command"])
    assert command[command.index("--sampler-steps") + 1] == "2" and command[command.index("--cfg-scale") + 1] == "2.0"
    final = last_outputs(generate(app, "a red circle", method=PIXELS_CLIP, model="fft", size="32", steps=2, cutn=4,
                                  spectrum_decay=1.5))
    recipe = read_recipe(final[FILES][0])
    assert recipe["spectrum_decay"] == 1.5 and "--spectrum-decay 1.5" in recipe["command"]
    error, _ = error_of(generate(app, spectrum_decay=1.5))
    assert error == "spectrum decay does not apply to VQGAN-CLIP; clear it or pick Pixels-CLIP"


def test_noise_optimisation_masked_edit_keeps_the_unpainted_region(app, tmp_path):
    final = last_outputs(edit(app, photo_editor(tmp_path, painted=(8, 8, 23, 23), size=32), method=NOISE,
                              model="shapes-tiny", steps=2))
    result_path, init_path, mask_path = map(Path, final[FILES])
    recipe = read_recipe(result_path)
    assert recipe["pipeline"] == "noise_optimization" and Path(recipe["mask"]).name == "mask.png"
    assert recipe["command"].startswith("python -m pipelines.noise_optimization 'a blue circle'")
    result, init = (np.asarray(Image.open(p).convert("RGB")).astype(int) for p in (result_path, init_path))
    outside = np.asarray(Image.open(mask_path)) == 0
    assert np.abs(result - init)[outside].max() <= 1 and np.abs(result - init)[~outside].mean() > 1


def test_pixels_clip_masked_edit_keeps_the_unpainted_region(app, tmp_path):
    final = last_outputs(edit(app, photo_editor(tmp_path, painted=(8, 8, 23, 23)), method=PIXELS_CLIP, model="rgb",
                              steps=3))
    result_path, init_path, mask_path = map(Path, final[FILES])
    assert read_recipe(result_path)["command"].startswith("python -m pipelines.pixels_clip 'a blue circle'")
    result, init = (np.asarray(Image.open(p).convert("RGB")).astype(int) for p in (result_path, init_path))
    outside = np.asarray(Image.open(mask_path)) == 0
    assert np.abs(result - init)[outside].max() <= 1 and np.abs(result - init)[~outside].mean() > 1


@pytest.mark.parametrize("overrides, message", [
    ({"clip_scale": 500.0}, "clip scale does not apply to VQGAN-CLIP; clear it or pick CLIP-guided diffusion"),
    ({"method": PIXELS_CLIP, "model": "fft", "tv_scale": 1.0, "range_scale": 2.0},
     "tv scale and range scale do not apply to Pixels-CLIP; clear them or pick CLIP-guided diffusion"),
    ({"method": DIFFUSION, "lr": 0.2},
     "learning rate does not apply to CLIP-guided diffusion; clear it or pick VQGAN-CLIP or Pixels-CLIP or "
     "Noise optimisation (diffusion)"),
])
def test_a_set_option_the_pipeline_does_not_take_is_refused_in_one_line(app, overrides, message):
    error, seen = error_of(generate(app, **overrides))
    assert error == message and message in seen[-1][STATUS]


def test_edit_refuses_options_the_generator_does_not_take(app, tmp_path):
    error, _ = error_of(edit(app, photo_editor(tmp_path), clip_scale=10.0))
    assert error == "clip scale does not apply to VQGAN-CLIP; clear it or pick CLIP-guided diffusion"


def test_a_new_registry_row_appears_in_the_app_and_runs(tmp_path, monkeypatch):
    (tmp_path / "noise_clip_demo.py").write_text(textwrap.dedent("""
        from dataclasses import replace

        from pipelines.pixels_clip import SPEC as PIXELS

        SPEC = replace(PIXELS, name="noise_clip_demo", title="Noise-CLIP", module="noise_clip_demo")
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(registry.PIPELINES, "noise_clip_demo", "noise_clip_demo")
    config = AppConfig(device="cpu", max_size=64, output_dir=tmp_path / "results",
                       models=ModelPolicy.build({"noise_clip_demo": ["rgb"]}))
    components = page_components(build_app(config))
    for tab in ("generate", "edit"):
        assert ("Noise-CLIP", "noise_clip_demo") in components[f"{tab}-method"].choices
    final = last_outputs(generate(WebApp(config), method="noise_clip_demo", model="rgb", size="32", steps=2))
    assert "Done: 2 steps" in final[STATUS]
    assert read_recipe(final[FILES][0])["command"].startswith("python -m noise_clip_demo 'a red circle' "
                                                              "--parameterization rgb")


# --- editing --------------------------------------------------------------------------------------------------


def test_masked_edit_changes_only_the_painted_region(app, tmp_path):
    final = last_outputs(edit(app, photo_editor(tmp_path, painted=(8, 8, 23, 23)), steps=4))
    result_path, init_path, mask_path = map(Path, final[FILES])
    recipe = read_recipe(result_path)
    assert recipe["mask"] == str(mask_path) and recipe["init_image"] == str(init_path)
    assert "--init-image init.png --mask mask.png" in recipe["command"]
    assert "--edit-strength" not in recipe["command"]  # VQGAN-CLIP's call does not take it, so it is not set
    result, init = (np.asarray(Image.open(p).convert("RGB")).astype(int) for p in (result_path, init_path))
    outside = np.asarray(Image.open(mask_path)) == 0
    assert result.shape == init.shape == (48, 48, 3)
    assert np.abs(result - init)[outside].max() <= 1
    assert np.abs(result - init)[~outside].mean() > 1


def test_masked_diffusion_edit_keeps_the_unpainted_region(app, tmp_path):
    final = last_outputs(edit(app, photo_editor(tmp_path, painted=(8, 8, 23, 23)), method=DIFFUSION, steps=6))
    result_path, init_path, mask_path = map(Path, final[FILES])
    recipe = read_recipe(result_path)
    assert recipe["pipeline"] == "clip_guided_diffusion"
    assert "--edit-strength 0.5" in recipe["command"]  # set by the app, as the diffusion call takes it
    result, init = (np.asarray(Image.open(p).convert("RGB")).astype(int) for p in (result_path, init_path))
    outside = np.asarray(Image.open(mask_path)) == 0
    assert np.abs(result - init)[outside].max() <= 1 and np.abs(result - init)[~outside].mean() > 1


def test_uploaded_mask_replaces_the_painted_one(app, tmp_path):
    mask = Image.new("L", (48, 48), 0)
    ImageDraw.Draw(mask).rectangle((0, 0, 15, 47), fill=255)
    mask.save(tmp_path / "left.png")
    final = last_outputs(edit(app, photo_editor(tmp_path, painted=None), mask_file=str(tmp_path / "left.png"), steps=1))
    saved = np.asarray(Image.open(final[FILES][2])) > 0
    assert saved[:, :16].all() and not saved[:, 16:].any()


def test_directional_and_init_image_edits_run(app, tmp_path):
    directional = last_outputs(edit(app, photo_editor(tmp_path), edit_method=DIRECTIONAL_EDIT, source="a red circle",
                                    steps=2))
    assert read_recipe(directional[FILES][0])["source_text"] == "a red circle"
    assert len(directional[FILES]) == 2  # the result and the init image; no mask
    plain = last_outputs(edit(app, photo_editor(tmp_path, painted=None), edit_method=INIT_IMAGE_EDIT, steps=2))
    assert "mask" not in read_recipe(plain[FILES][0])


def test_a_directional_edit_in_the_region_found_keeps_the_rest_of_the_photo(app, tmp_path):
    final = last_outputs(edit(app, photo_editor(tmp_path), edit_method=LOCALISED_EDIT, source="a red circle",
                              steps=2))
    recipe = read_recipe(final[FILES][0])
    assert recipe["mask"] == "auto" and recipe["source_text"] == "a red circle" and "--mask auto" in recipe["command"]
    assert len(final[FILES]) == 2  # the result and the init image; the mask is found, not uploaded
    init, result = (np.asarray(Image.open(path).convert("RGB")).astype(int) for path in final[FILES][1::-1])
    assert 0 < (np.abs(result - init).max(-1) > 1).mean() < 1  # part of the photo changed, not all of it


def test_large_photos_are_scaled_to_the_size_limit(app, tmp_path):
    final = last_outputs(edit(app, photo_editor(tmp_path, size=120), edit_method=INIT_IMAGE_EDIT, steps=1,
                              request=session("large")))
    assert Image.open(final[FILES][0]).size == (120, 120)  # under max_size 128, a multiple of the VQGAN's 4
    small = WebApp(AppConfig(device="cpu", max_size=64, max_upload_pixels=10**6, output_dir=app.config.output_dir),
                   app.cache)
    final = last_outputs(edit(small, photo_editor(tmp_path, size=120), edit_method=INIT_IMAGE_EDIT, steps=1))
    assert Image.open(final[FILES][0]).size == (64, 64)


@pytest.mark.parametrize("photo, overrides, message", [
    (None, {}, "upload a photo"),
    ({"painted": None}, {}, "paint it with the brush"),
    ({}, {"edit_method": DIRECTIONAL_EDIT}, "needs a source text"),
    ({}, {"edit_method": LOCALISED_EDIT}, "needs a source text"),
    ({}, {"target": ""}, "the target text is empty"),
    ({"size": 200}, {}, "over the limit of 0.016384 Mpx; downscale it first"),
])
def test_bad_edit_input_shows_one_line(app, tmp_path, photo, overrides, message):
    error, _ = error_of(edit(app, None if photo is None else photo_editor(tmp_path, **photo), **overrides))
    assert message in error


def test_unsupported_mask_upload_shows_one_line(app, tmp_path):
    (tmp_path / "mask.txt").write_text("hello")
    error, _ = error_of(edit(app, photo_editor(tmp_path), mask_file=str(tmp_path / "mask.txt")))
    assert "use a PNG, JPEG or WebP file" in error


# --- the page and the command line ----------------------------------------------------------------------------


def test_runs_share_one_concurrency_group_and_stop_skips_the_queue(tmp_path):
    blocks = build_app(AppConfig(device="cpu", output_dir=tmp_path, max_queue=3))
    assert blocks._queue.default_concurrency_limit == 5  # the running one, 3 waiting, one to hear "busy"
    events = {}
    for fn in blocks.fns.values():
        events.setdefault(fn.name, []).append(fn)
    runs = events["generate"] + events["edit"]
    assert {fn.concurrency_id for fn in runs} == {RUNS} and {fn.concurrency_limit for fn in runs} == {"default"}
    assert len(events["stop"]) == 2 and not any(fn.queue for fn in events["stop"])


def test_command_line_defaults_and_bad_device(capsys):
    args = build_parser().parse_args([])
    assert (args.host, args.port, args.share, args.device) == ("127.0.0.1", 7860, False, "auto")
    assert build_parser().parse_args(["--share", "--port", "9000"]).share
    assert run_cli(main, ["--device", "no-such-device"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: unknown device")
