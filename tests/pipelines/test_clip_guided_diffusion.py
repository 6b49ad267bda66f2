"""The CLIP-guided diffusion pipeline and CLI on tiny random-weight models (a pixel UNet2DModel, Stable-Diffusion-
like latent parts, a tiny CLIP) saved to folders and files, as a user would pass them."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image

from generators.diffusion import load_diffusion, random_latent_model, random_pixel_model, save_diffusion
from guidance import CLIPLoss, InvalidInputError, MakeCutouts, ToolkitError, read_recipe, save_clip
from guidance.images import pil_to_tensor
from pipelines.clip_guided_diffusion import CLIPGuidedDiffusionPipeline, build_parser, main
from pipelines.common import PipelineOutput, call_defaults, run_cli
from pipelines.diffusionclip import FinetuneOutput, finetune
from pipelines.registry import get_pipeline_spec, load_pipeline

FAST = dict(progress=False, save_every=0, cutn=4)


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_clip) -> dict[str, str]:
    """A tiny CLIP file, a tiny pixel model folder and a tiny latent model folder."""
    folder = tmp_path_factory.mktemp("models")
    save_clip(tiny_clip, folder / "clip.safetensors")
    save_diffusion(random_pixel_model(seed=0), folder / "pixel")
    save_diffusion(random_latent_model(seed=0), folder / "latent")
    return {name: str(folder / file) for name, file in
            (("clip", "clip.safetensors"), ("pixel", "pixel"), ("latent", "latent"))}


@pytest.fixture(scope="module")
def pipe(files) -> CLIPGuidedDiffusionPipeline:
    """The pipeline on the tiny pixel model, on CPU."""
    return CLIPGuidedDiffusionPipeline.from_pretrained(files["pixel"], [files["clip"]], device="cpu")


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    """A real photo (skimage's astronaut) at the tiny model's 32x32."""
    from skimage import data

    path = tmp_path_factory.mktemp("photos") / "photo.png"
    Image.fromarray(data.astronaut()).resize((32, 32), Image.Resampling.LANCZOS).save(path)
    return path


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(int)


def test_guidance_lowers_the_clip_loss_of_the_final_sample(pipe):
    kwargs = dict(size=32, steps=20, seed=0, cutn=8, augment="none", progress=False, save_every=0)
    unguided = pipe("a red circle", clip_scale=0, **kwargs)
    guided = pipe("a red circle", **kwargs)  # default clip scale 1000, tv 150, range 50, gradient RMS clamp 0.05
    assert unguided.history == [] and len(guided.history) == 20
    judge = CLIPLoss(pipe.clip_models, "a red circle", cutouts=MakeCutouts(32, cutn=1, augment="none", min_size=32))
    with torch.no_grad():
        before, after = (judge(pil_to_tensor(out.images[0])).item() for out in (unguided, guided))
    assert after < before - 0.1, (before, after)  # about 1.09 -> 0.65 with this seed


def test_guiding_only_some_steps(pipe):
    out = pipe("a red circle", size=32, steps=10, seed=0, guide_from=0.2, guide_until=0.8, guide_every=2, **FAST)
    assert [h["step"] for h in out.history] == [3, 5, 7]


def test_ddim_inversion_then_unguided_generation_reconstructs_the_photo(pipe, photo):
    # Tolerances for a random-weight UNet, whose noise prediction changes far faster with its input than a trained
    # model's, so plain DDIM inversion (noise predicted at the not-yet-moved sample) drifts more than usual:
    # 50 steps to t0 = T/2 (25 inverted, 25 regenerated) measure 25.6 dB PSNR, hence > 24 dB; with 3 fixed-point
    # refinements per inversion step 20 steps measure a max error of 0.03, hence < 0.05 (13 of 255 levels).
    source = pil_to_tensor(Image.open(photo).convert("RGB"))
    kwargs = dict(init_image=photo, source_text="a photo of an astronaut", clip_scale=0, edit_strength=0.5, **FAST)
    plain = pil_to_tensor(pipe("a photo", steps=50, **kwargs).images[0])
    assert 10 * torch.log10(1 / (plain - source).square().mean()) > 24
    refined = pipe("a photo", steps=20, inversion_refine=3, **kwargs)
    assert (pil_to_tensor(refined.images[0]) - source).abs().max() < 0.05
    assert refined.recipe["inversion_steps"] == 10 and refined.recipe["skip_steps"] == 10


def test_init_image_redoes_the_last_half_of_the_steps_by_default(pipe, photo):
    out = pipe("a red circle", steps=8, seed=0, init_image=photo, init_weight=2.0, **FAST)
    assert out.recipe["skip_steps"] == 4 and [h["step"] for h in out.history] == [1, 2, 3, 4]
    assert out.recipe["init_weight"] == 2.0 and out.recipe["init_image"] == [str(photo)]


def test_bf16_runs_on_cpu_and_fp16_is_refused(pipe):
    out = pipe("a red circle", size=32, steps=2, precision="bf16", **FAST)
    assert out.images[0].size == (32, 32) and np.isfinite(out.history[-1]["loss"])
    with pytest.raises(InvalidInputError, match="fp16 needs a GPU"):
        pipe("a red circle", size=32, steps=1, precision="fp16", progress=False)


def test_directional_edit_is_guided_by_the_directional_loss(pipe, photo):
    out = pipe("a photo of a dog", size=32, steps=10, seed=0, init_image=photo, source_text="a photo of a cat", **FAST)
    assert {"directional", "target", "l1"} <= set(out.history[-1]) and len(out.history) == 5
    assert out.recipe["init_weight"] == 1.0 and out.recipe["source_text"] == "a photo of a cat"


def test_masked_edit_keeps_the_unmasked_region(pipe, photo, tmp_path):
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = pipe("a red hat", steps=10, seed=1, init_image=photo, mask=tmp_path / "mask.png", **FAST)
    source, edited, outside = pixels(Image.open(photo)), pixels(out.images[0]), mask == 0
    assert np.abs(edited[outside] - source[outside]).max() <= 1
    assert np.abs(edited[~outside] - source[~outside]).mean() > 5  # the masked region did change


def test_directional_edit_with_a_mask_keeps_the_unmasked_region(pipe, photo, tmp_path):
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = pipe("a photo of a dog", steps=10, seed=1, init_image=photo, mask=tmp_path / "mask.png",
               source_text="a photo of a cat", **FAST)
    assert {"directional", "target"} <= set(out.history[-1])  # a region also descends the target text's loss
    source, edited, outside = pixels(Image.open(photo)), pixels(out.images[0]), mask == 0
    assert np.abs(edited[outside] - source[outside]).max() <= 1
    assert np.abs(edited[~outside] - source[~outside]).mean() > 5


def test_auto_mask_is_recorded_and_refused_without_source_text(pipe, photo):
    out = pipe("a photo of a dog", steps=4, seed=1, init_image=photo, mask="auto", source_text="a photo of a cat",
               **FAST)
    assert out.recipe["mask"] == "auto"
    with pytest.raises(InvalidInputError, match="--mask auto finds the region to edit from --source-text"):
        pipe("a dog", steps=4, init_image=photo, mask="auto", **FAST)
    with pytest.raises(InvalidInputError, match="--mask auto finds the region of one init image, got 2"):
        pipe("a dog", steps=4, init_image=[photo, photo], mask="auto", source_text="a cat", **FAST)


def test_nan_guidance_gradients_are_skipped(pipe, monkeypatch):
    monkeypatch.setattr(CLIPLoss, "forward", lambda self, images, reduction="mean": images.sum() * float("nan"))
    out = pipe("a red circle", size=32, steps=5, seed=0, scheduler="ddpm", **FAST)
    assert np.isfinite(pixels(out.images[0])).all() and pixels(out.images[0]).std() > 0
    assert [h["skipped"] for h in out.history] == [1.0] * 5


def test_same_seed_same_image_other_seed_differs(pipe):
    kwargs = dict(size=32, steps=4, scheduler="ddpm", **FAST)
    first, again, other = (pixels(pipe("a red circle", seed=s, **kwargs).images[0]) for s in (7, 7, 8))
    assert np.array_equal(first, again) and not np.array_equal(first, other)


def test_callback_stops_and_ctrl_c_keeps_the_last_estimate(pipe):
    seen = []
    out = pipe("a red circle", size=32, steps=10, seed=0, progress=False, cutn=2, save_every=2,
               callback=lambda step, images: seen.append(step) or step >= 4)
    assert seen == [2, 4] and out.recipe["steps_done"] == 4 and len(out.frames) == 3

    def interrupt(step, images):
        raise KeyboardInterrupt

    out = pipe("a red circle", size=32, steps=10, seed=0, progress=False, cutn=2, save_every=3, callback=interrupt)
    assert out.interrupted and out.recipe["interrupted"] and out.recipe["steps_done"] == 3
    assert out.images[0].size == (32, 32)


def test_finetune_saves_a_model_that_reloads_and_edits_several_photos(pipe, files, photo, tmp_path):
    tuned = finetune(pipe, "a photo of a dog", init_image=[photo, photo], source_text="a photo of a cat",
                     finetune_steps=2, lr=1e-3, ddim_steps=2, steps=10, edit_strength=0.4, progress=False)
    assert isinstance(tuned, FinetuneOutput) and len(tuned.history) == 2 and not tuned.interrupted
    before = torch.cat([p.flatten() for p in pipe.model.unet.parameters()])
    after = torch.cat([p.flatten() for p in tuned.pipeline.model.unet.parameters()])
    assert not torch.equal(before, after) and not any(p.requires_grad for p in tuned.pipeline.model.unet.parameters())
    folder = tuned.pipeline.save_model(tmp_path / "tuned")
    reloaded = CLIPGuidedDiffusionPipeline.from_pretrained(folder, device="cpu")
    assert reloaded.model.finetuned and reloaded.clip_models == []
    assert reloaded.model.info["finetuned_from"] == files["pixel"] and reloaded.model.info["edit_strength"] == 0.4
    assert reloaded.inversion_model.unet is not reloaded.model.unet  # inversion runs on the original
    out = reloaded(init_image=[photo, photo], steps=10, **FAST)  # the tuned edit: no prompt, no CLIP needed
    assert len(out.images) == 2 and out.recipe["skip_steps"] == 6 and out.recipe["source_text"] == "a photo of a cat"


def test_registry_spec_loads_the_pipeline_and_offers_the_models(files):
    spec = get_pipeline_spec("clip_guided_diffusion")
    assert spec.module == "pipelines.clip_guided_diffusion" and spec.model_flag == "--model"
    choices = list(spec.model_choices())
    assert choices[:2] == list(spec.offline_models) == ["shapes-tiny-text", "shapes-tiny"]
    assert "google/ddpm-celebahq-256" in choices
    assert len(choices) == len(set(choices))
    loaded = load_pipeline("clip_guided_diffusion", files["pixel"], [files["clip"]], torch.device("cpu"))
    assert isinstance(loaded, CLIPGuidedDiffusionPipeline) and loaded.size_factor == 2
    assert {"init_image", "mask", "source_text", "cfg_scale"} <= spec.call_options(loaded)
    out = loaded("a red circle", size=32, steps=2, seed=0, **FAST)
    assert isinstance(out, PipelineOutput) and out.recipe["pipeline"] == spec.name


def test_cli_defaults_are_the_calls_defaults():
    args, defaults = vars(build_parser().parse_args([])), call_defaults(CLIPGuidedDiffusionPipeline.__call__)
    shared = set(args) & set(defaults) - {"candidates"}  # the CLI's is --method noise's; the sampler's is read if given
    assert {"steps", "tv_scale", "cutn", "cut_pow", "augment", "inversion_refine", "save_every"} <= shared
    assert {name: args[name] for name in shared} == {name: defaults[name] for name in shared}
    assert (args["finetune_lr"], args["finetune_ddim_steps"]) == (call_defaults(finetune)["lr"], 6)


def test_latent_model_generates_and_edits_with_the_vae_in_the_loss(files, photo):
    latent = CLIPGuidedDiffusionPipeline.from_pretrained(files["latent"], [files["clip"]], device="cpu")
    out = latent("a red circle | blurry:-1", size=32, steps=4, seed=0, cfg_scale=3.0, **FAST)
    assert out.images[0].size == (32, 32) and len(out.history) == 4 and out.recipe["cfg_scale"] == 3.0
    assert all(np.isfinite(h["loss"]) for h in out.history)
    edit = latent("a photo of a dog", size=32, steps=4, init_image=photo, source_text="a photo of a cat", **FAST)
    assert edit.images[0].size == (32, 32) and "directional" in edit.history[0]


@pytest.mark.parametrize("kwargs, message", [
    (dict(prompt=""), "prompt is empty"),
    (dict(size="0"), "impossible"),
    (dict(steps=0), "steps"),
    (dict(scheduler="euler"), "unknown scheduler"),
    (dict(mask="mask.png"), "--init-image"),
    (dict(skip_steps=3), "--init-image"),
    (dict(source_text="a cat", init_image="x.png", scheduler="ddpm"), "--scheduler ddim"),
    (dict(cfg_scale=7.5), "unconditional"),
    (dict(guide_from=0.5, guide_until=0.5), "--guide-until"),
    (dict(eta=0.5, scheduler="ddpm"), "eta"),
    (dict(guidance_schedule="step"), "--guidance-schedule"),
    (dict(recurrence=0), "--recurrence"),
    (dict(recurrence_range=(0.5, 1.5)), "--recurrence-range"),
    (dict(backward_steps=-1), "--backward-steps"),
])
def test_bad_settings_raise_one_line_errors(pipe, kwargs, message):
    kwargs = {"prompt": "a red circle", **kwargs}
    with pytest.raises(InvalidInputError, match=message) as error:
        pipe(kwargs.pop("prompt"), **{"size": 32, "steps": 2, **FAST, **kwargs})
    assert "\n" not in str(error.value)


def test_out_of_memory_names_the_size_asked_for_and_a_fix(pipe, monkeypatch):
    def exhausted(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.00 GiB (GPU 0; 8.00 GiB total)")

    monkeypatch.setattr(pipe.model, "predict_eps", exhausted)
    with pytest.raises(ToolkitError) as error:
        pipe("a red circle", size=64, steps=2, cutn=8, progress=False)
    message = str(error.value)
    assert "3.00 GiB" in message and "64x64" in message and "--size 48x48" in message and "--cutn 4" in message
    assert "\n" not in message


def cli_args(files: dict[str, str], *extra: str) -> list[str]:
    """CLI arguments for a fast run on the tiny models."""
    return ["--model", files["pixel"], "--clip-model", files["clip"], "--cutn", "2", "--device", "cpu", *extra]


@pytest.mark.slow
def test_cli_end_to_end_writes_png_recipe_and_video(files, tmp_path):
    output, video = tmp_path / "out.png", tmp_path / "progress.mp4"
    result = subprocess.run([sys.executable, "-m", "pipelines.clip_guided_diffusion",
                             *cli_args(files, "a red circle", "--steps", "6", "--save-every", "3", "-o", str(output),
                                       "--video", str(video), "--guide-every", "2")],
                            capture_output=True, text=True, cwd="/", timeout=300, env={**os.environ})
    assert result.returncode == 0, result.stderr
    recipe = read_recipe(output)
    assert recipe["prompt"] == "a red circle" and recipe["steps"] == 6 and recipe["size"] == "32x32"
    assert recipe["model"] == files["pixel"] and recipe["guide_every"] == 2 and recipe["steps_done"] == 6
    assert "--seed" in recipe["command"]  # a fresh seed was drawn and recorded
    with Image.open(output) as image:
        assert image.size == (32, 32) and image.text["scheduler"] == "ddim"
    assert iio.imread(video).shape[0] == 3  # steps 3, 6 and the final image

    again = tmp_path / "again.png"
    args = shlex.split(recipe["command"])[3:]
    args[args.index("-o") + 1] = str(again)
    assert main(args) == 0  # the recorded command reproduces the image
    # within one level: the subprocess sums on the default two threads, the test process on one (conftest)
    assert np.abs(pixels(Image.open(output)).astype(int) - pixels(Image.open(again))).max() <= 1


def test_cli_finetunes_saves_and_edits_several_images(files, photo, tmp_path):
    model = tmp_path / "tuned"
    common = ["--steps", "6", "--edit-strength", "0.5", "--save-every", "0", "--seed", "1"]
    assert main(cli_args(files, "a photo of a dog", "--source-text", "a photo of a cat", "--init-image", str(photo),
                         "--finetune-steps", "1", "--finetune-ddim-steps", "2", "--save-model", str(model), *common,
                         "-o", str(tmp_path / "tuned.png"))) == 0
    assert load_diffusion(model).info["target_text"] == "a photo of a dog"
    assert main(["--model", str(model), "--init-image", str(photo), "--init-image", str(photo), "--device", "cpu",
                 *common, "-o", str(tmp_path / "edit.png")]) == 0
    for name in ("edit-1.png", "edit-2.png"):
        recipe = read_recipe(tmp_path / name)
        assert recipe["finetuned_from"] == files["pixel"] and recipe["init_image"] == str(photo)


@pytest.mark.parametrize("extra, message", [
    (["", "--size", "32"], "prompt is empty"),
    (["a cat", "--init-image", "NOT_AN_IMAGE"], "cannot read image"),
    (["a cat", "--init-image", "PHOTO", "--mask", "SMALL_MASK"], "mask"),
    (["a cat", "--size", "0"], "impossible"),
    (["a cat", "--model", "no_such_model"], "no_such_model"),
    (["a cat", "--save-model", "DIR"], "--finetune-steps"),
])
def test_cli_bad_input_exits_2_with_one_line(files, photo, tmp_path, capsys, extra, message):
    (tmp_path / "NOT_AN_IMAGE").write_text("this is not an image")
    Image.new("L", (16, 16), 255).save(tmp_path / "SMALL_MASK.png")
    replace = {"NOT_AN_IMAGE": str(tmp_path / "NOT_AN_IMAGE"), "PHOTO": str(photo),
               "SMALL_MASK": str(tmp_path / "SMALL_MASK.png")}
    args = cli_args(files, *[replace.get(a, a) for a in extra], "--steps", "2", "-o", str(tmp_path / "x.png"))
    assert run_cli(main, args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err


def test_cli_unknown_hub_model_offline_exits_2_fast_in_one_line(files, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CLIP_GUIDANCE_OFFLINE", "1")
    started = time.monotonic()
    code = run_cli(main, ["a cat", "--model", "nobody/no-such-diffusion-model", "--clip-model", files["clip"],
                          "-o", str(tmp_path / "x.png")])
    assert code == 2 and time.monotonic() - started < 10
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "nobody/no-such-diffusion-model" in lines[0] and "--model path/to/folder" in lines[0]


@pytest.mark.parametrize("option", [dict(recurrence=3, recurrence_range="0.25:0.75"), dict(backward_steps=3),
                                    dict(guidance_schedule="linear"), dict(guidance_schedule="cosine")])
def test_stronger_guidance_options_change_the_result_and_are_recorded(pipe, option):
    kwargs = dict(size=32, steps=8, seed=3, clamp_grad=0, **FAST)
    plain, changed = (pipe("a red circle", **kwargs, **extra) for extra in ({}, option))
    # the random UNet saturates its images, so the guided path is compared by the losses along it
    assert [h["loss"] for h in plain.history] != [h["loss"] for h in changed.history]
    assert len(changed.history) == 8  # one record per guided step, however often it was redone
    for key, value in option.items():
        assert changed.recipe[key] == value


def test_recurrence_redoes_only_the_steps_in_its_range(pipe, monkeypatch):
    import pipelines.clip_guided_diffusion as module

    calls = []
    original = module.guided_eps
    monkeypatch.setattr(module, "guided_eps", lambda model, x, t, *rest: calls.append(t) or original(model, x, t, *rest))
    pipe("a red circle", size=32, steps=4, seed=0, recurrence=3, recurrence_range="0.5:1", **FAST)
    assert [calls.count(t) for t in dict.fromkeys(calls)] == [1, 1, 3, 3]


def test_num_images_samples_a_batch_with_a_recipe_each(pipe, files, tmp_path):
    out = pipe("a red circle", size=32, steps=2, seed=4, num_images=2, **FAST)
    first, second = (pixels(image) for image in out.images)
    assert len(out.images) == 2 and not np.array_equal(first, second)
    assert main(cli_args(files, "a red circle", "--steps", "2", "--num-images", "2", "--seed", "4", "--save-every",
                         "0", "-o", str(tmp_path / "many.png"))) == 0
    recipes = [read_recipe(tmp_path / f"many-{k}.png") for k in (1, 2)]
    assert [(r["index"], r["num_images"], r["seed"]) for r in recipes] == [(1, 2, 4), (2, 2, 4)]
    assert "--num-images 2" in recipes[0]["command"]


@pytest.mark.parametrize("extra, message", [
    (["--recurrence", "0"], "--recurrence must be between 1 and"),
    (["--recurrence", "2", "--recurrence-range", "0.8:0.2"], "--recurrence-range must be A:B"),
    (["--recurrence-range", "half"], "--recurrence-range must be A:B"),
    (["--num-images", "2", "--init-image", "PHOTO"], "--num-images"),
])
def test_cli_refuses_bad_guidance_settings_in_one_line(files, photo, tmp_path, capsys, extra, message):
    args = cli_args(files, "a cat", *[str(photo) if a == "PHOTO" else a for a in extra], "--steps", "2",
                    "-o", str(tmp_path / "x.png"))
    assert run_cli(main, args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
