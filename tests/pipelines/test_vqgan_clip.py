"""The VQGAN-CLIP pipeline and CLI, with tiny random-weight models saved to files."""

from __future__ import annotations

import json
import shlex
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image

from generators.vqgan import VQGAN, parse_config, save_vqgan, tiny_vqgan_config
from guidance import ImagePrompt, InvalidInputError, ToolkitError, read_recipe, save_clip
from pipelines.common import run_cli, write_video
from pipelines.latent_optimization import WHOLE_IMAGE_FIDELITY
from pipelines.vqgan_clip import VQGANCLIPPipeline, main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model_files(tmp_path_factory, tiny_clip) -> dict[str, str]:
    """A tiny CLIP and a tiny VQGAN (factor 2) saved as safetensors files."""
    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    save_clip(tiny_clip, folder / "clip.safetensors")
    save_vqgan(VQGAN(parse_config(tiny_vqgan_config())), folder / "vqgan.safetensors")
    return {"clip": str(folder / "clip.safetensors"), "vqgan": str(folder / "vqgan.safetensors")}


@pytest.fixture(scope="module")
def pipe(model_files) -> VQGANCLIPPipeline:
    """The pipeline on the tiny models, on CPU."""
    return VQGANCLIPPipeline.from_pretrained(model_files["vqgan"], [model_files["clip"]], device="cpu")


@pytest.fixture()
def photo(tmp_path) -> Path:
    """A real 64x64 photo (skimage's astronaut) as a PNG."""
    from skimage import data

    path = tmp_path / "photo.png"
    Image.fromarray(data.astronaut()).resize((64, 64), Image.Resampling.LANCZOS).save(path)
    return path


def cli_args(model_files: dict[str, str], *extra: str) -> list[str]:
    """CLI arguments for a fast run on the tiny models."""
    return ["--clip-model", model_files["clip"], "--vqgan", model_files["vqgan"], "--cutn", "4", "--device", "cpu",
            *extra]


def run_module(args: list[str], env: dict[str, str] | None = None, **kwargs) -> subprocess.CompletedProcess:
    """Run `python -m pipelines.vqgan_clip` in a subprocess from another directory."""
    return subprocess.run([sys.executable, "-m", "pipelines.vqgan_clip", *args], capture_output=True, text=True,
                          cwd="/", env={**os.environ, **(env or {})}, timeout=300, **kwargs)


def test_loss_falls_over_20_steps(pipe):
    out = pipe(image_prompts=[ImagePrompt(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)))],
               size=32, steps=20, seed=0, lr=0.2, cutn=8, augment="none", progress=False, save_every=0)
    losses = [h["loss"] for h in out.history]
    assert len(losses) == 20
    assert np.mean(losses[-5:]) < np.mean(losses[:5])


def test_same_seed_same_image_and_other_seed_differs(pipe):
    kwargs = dict(size=32, steps=3, cutn=4, progress=False, save_every=0)
    first = np.asarray(pipe("a red circle", seed=7, **kwargs).images[0])
    again = np.asarray(pipe("a red circle", seed=7, **kwargs).images[0])
    other = np.asarray(pipe("a red circle", seed=8, **kwargs).images[0])
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_size_is_rounded_down_to_the_factor_with_a_notice(pipe):
    with pytest.warns(UserWarning, match="rounded down to 32x32"):
        out = pipe("a red circle", size="33x33", steps=1, cutn=2, progress=False, save_every=0)
    assert out.images[0].size == (32, 32)
    assert out.recipe["size"] == "32x32"


def test_masked_edit_keeps_unmasked_pixels(pipe, photo, tmp_path):
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = pipe("a red hat", size=64, steps=10, seed=1, lr=0.3, cutn=4, init_image=photo, mask=tmp_path / "mask.png",
               progress=False, save_every=0)
    source = np.asarray(Image.open(photo).convert("RGB")).astype(int)
    edited = np.asarray(out.images[0]).astype(int)
    outside = mask == 0
    assert np.abs(edited[outside] - source[outside]).max() <= 1
    assert np.abs(edited[~outside] - source[~outside]).mean() > 2  # the masked region did change


def test_directional_edit_runs_and_stays_near_the_source(pipe, photo):
    out = pipe("a photo of a dog", size=64, steps=5, seed=0, cutn=4, init_image=photo,
               source_text="a photo of a cat", progress=False, save_every=0)
    assert {"directional", "target", "l1"} <= set(out.history[-1])  # the whole image descends the target text too
    assert out.recipe["source_text"] == "a photo of a cat" and out.recipe["init_weight"] == WHOLE_IMAGE_FIDELITY
    masked = pipe("a photo of a dog", size=64, steps=1, seed=0, cutn=4, init_image=photo, mask=torch.ones(64, 64),
                  source_text="a photo of a cat", progress=False, save_every=0)
    assert masked.recipe["init_weight"] == 1.0  # inside a mask the edit holds to the source at 1


def test_directional_edit_with_a_mask_changes_only_the_mask(pipe, photo, tmp_path):
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = pipe("a photo of a dog", size=64, steps=10, seed=1, lr=0.3, cutn=4, init_image=photo,
               mask=tmp_path / "mask.png", source_text="a photo of a cat", progress=False, save_every=0)
    assert {"directional", "target"} <= set(out.history[-1])  # a region also descends the target text's loss
    source, edited = np.asarray(Image.open(photo).convert("RGB")).astype(int), np.asarray(out.images[0]).astype(int)
    outside = mask == 0
    assert np.abs(edited[outside] - source[outside]).max() <= 1
    assert np.abs(edited[~outside] - source[~outside]).mean() > 2


def test_auto_mask_edits_only_the_region_clip_relates_to_the_texts(pipe, photo):
    from guidance.relevance import relevance_mask
    from pipelines.common import load_init_images

    out = pipe("a photo of a dog", size=64, steps=10, seed=1, lr=0.3, cutn=4, init_image=photo, mask="auto",
               source_text="a photo of a cat", progress=False, save_every=0)
    init = load_init_images(photo, (64, 64), torch.device("cpu"))
    region = relevance_mask(pipe.clip_models, init, "a photo of a cat", "a photo of a dog")[0, 0].numpy() > 0.5
    source, edited = np.asarray(Image.open(photo).convert("RGB")).astype(int), np.asarray(out.images[0]).astype(int)
    assert 0 < region.mean() < 1 and out.recipe["mask"] == "auto"
    assert np.abs(edited[~region] - source[~region]).max() <= 1
    assert np.abs(edited[region] - source[region]).mean() > 2


def test_cli_auto_mask_edit_records_the_command_that_remakes_it(model_files, photo, tmp_path):
    first = tmp_path / "first.png"
    assert main(cli_args(model_files, "a photo of a dog", "--init-image", str(photo), "--mask", "auto",
                         "--source-text", "a photo of a cat", "--size", "64", "--steps", "3", "--seed", "2",
                         "-o", str(first))) == 0
    recipe = read_recipe(first)
    command = shlex.split(recipe["command"])
    assert recipe["mask"] == "auto" and command[command.index("--mask") + 1] == "auto"
    again = tmp_path / "again.png"
    args = command[3:]
    args[args.index("-o") + 1] = str(again)
    assert main(args) == 0
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(again)))


def test_auto_mask_without_source_text_is_one_line(pipe, photo):
    with pytest.raises(InvalidInputError, match="--mask auto finds the region to edit from --source-text") as error:
        pipe("a dog", size=64, steps=1, init_image=photo, mask="auto", progress=False)
    assert "\n" not in str(error.value)


def test_callback_can_stop_the_run_and_keeps_the_last_image(pipe):
    seen = []
    out = pipe("a red circle", size=32, steps=50, seed=0, cutn=2, progress=False, save_every=2,
               callback=lambda step, images: seen.append(step) or step >= 4)
    assert seen == [2, 4]
    assert len(out.history) == 4 and out.images[0].size == (32, 32)


@pytest.mark.parametrize("kwargs, message", [
    (dict(prompt=""), "prompt is empty"),
    (dict(prompt="a cat:1:0.5:x:"), "empty weight"),
    (dict(size="0"), "impossible"),
    (dict(size="1x1"), "smaller than"),
    (dict(steps=0), "steps"),
    (dict(mask="mask.png"), "--init-image"),
    (dict(source_text="a cat", init_image=None), "--init-image"),
    (dict(candidates=0), "--candidates"),
    (dict(contrast=-1.0), "contrast"),
])
def test_bad_settings_raise_one_line_errors(pipe, kwargs, message):
    kwargs = {"prompt": "a red circle", **kwargs}
    with pytest.raises(InvalidInputError, match=message) as error:
        pipe(kwargs.pop("prompt"), **{"size": 32, "steps": 1, "progress": False, **kwargs})
    assert "\n" not in str(error.value)


def test_cli_writes_png_with_recipe_and_video(model_files, tmp_path):
    output, video = tmp_path / "out.png", tmp_path / "progress.mp4"
    result = run_module(cli_args(model_files, "a red circle | blue:-0.5", "--size", "40x32", "--steps", "6",
                                 "--seed", "5", "--save-every", "2", "-o", str(output), "--video", str(video),
                                 "--candidates", "3", "--contrast", "0.25"))
    assert result.returncode == 0, result.stderr
    recipe = read_recipe(output)
    assert recipe["candidates"] == 3 and recipe["contrast"] == 0.25
    assert recipe["prompt"] == "a red circle | blue:-0.5"
    assert recipe["seed"] == 5 and recipe["size"] == "40x32" and recipe["steps"] == 6 and recipe["cutn"] == 4
    assert recipe["vqgan"] == model_files["vqgan"]
    assert "--seed 5" in recipe["command"]
    with Image.open(output) as image:
        assert image.size == (40, 32)
        assert json.loads(image.text["seed"]) == 5  # each parameter is its own text chunk too
    assert iio.imread(video).shape == (4, 32, 40, 3)  # steps 2, 4, 6 and the final image


def test_gif_progress_video(tmp_path):
    frames = [np.full((8, 10, 3), 40 * i, np.uint8) for i in range(3)]
    with Image.open(write_video(frames, tmp_path / "p.gif")) as gif:
        assert gif.n_frames == 3 and gif.size == (10, 8)


def test_cli_seed_reproduces_the_recorded_image(model_files, tmp_path):
    first = tmp_path / "first.png"
    assert main(cli_args(model_files, "a red circle", "--size", "32", "--steps", "3", "-o", str(first))) == 0
    command = shlex.split(read_recipe(first)["command"])
    assert "--seed" in command  # a fresh seed was drawn and recorded
    again = tmp_path / "again.png"
    args = command[3:]
    args[args.index("-o") + 1] = str(again)
    assert main(args) == 0
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(again)))


@pytest.mark.parametrize("extra, message", [
    (["a cat", "--init-image", "NOT_AN_IMAGE"], "cannot read image"),
    (["a cat", "--init-image", "PHOTO", "--mask", "SMALL_MASK"], "mask"),
    (["a cat", "--init-image", "PHOTO", "--mask", "auto"], "--mask auto finds the region to edit from --source-text"),
    (["", "--size", "32"], "prompt is empty"),
    (["a cat", "--size", "0"], "impossible"),
    (["a cat", "-o", "out.jpg"], "must end in .png"),
    (["a cat", "--vqgan", "no_such_vqgan"], "no_such_vqgan"),
])
def test_cli_bad_input_exits_2_with_one_line(model_files, photo, tmp_path, capsys, extra, message):
    (tmp_path / "NOT_AN_IMAGE").write_text("this is not an image")
    Image.new("L", (16, 16), 255).save(tmp_path / "SMALL_MASK.png")
    replace = {"NOT_AN_IMAGE": str(tmp_path / "NOT_AN_IMAGE"), "PHOTO": str(photo),
               "SMALL_MASK": str(tmp_path / "SMALL_MASK.png"), "out.jpg": str(tmp_path / "out.jpg")}
    args = cli_args(model_files, *[replace.get(a, a) for a in extra], "--steps", "1", "-o",
                    str(tmp_path / "x.png")) if "-o" not in extra else cli_args(model_files, *[replace.get(a, a) for a in extra])
    assert run_cli(main, args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err


def test_cli_exit_code_2_in_a_subprocess(model_files, tmp_path):
    result = run_module(cli_args(model_files, "a cat", "--size", "0", "-o", str(tmp_path / "x.png")))
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: size 0x0 is impossible")
    assert "Traceback" not in result.stderr


def test_offline_default_models_fail_fast_with_one_line(tmp_path):
    env = {"CLIP_GUIDANCE_CACHE": str(tmp_path / "cache"), "HF_HOME": str(tmp_path / "hf"),
           "XDG_CACHE_HOME": str(tmp_path / "xdg"), "CLIP_GUIDANCE_OFFLINE": "1"}
    started = time.monotonic()
    result = run_module(["a rocket on a launchpad", "-o", str(tmp_path / "x.png")], env=env)
    assert result.returncode == 2
    assert time.monotonic() - started < 60
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "ViT-B-32" in lines[0] and "local file" in lines[0]


def test_offline_vqgan_names_the_missing_model(model_files, tmp_path):
    env = {"CLIP_GUIDANCE_CACHE": str(tmp_path / "cache"), "CLIP_GUIDANCE_OFFLINE": "1"}
    result = run_module(["a cat", "--clip-model", model_files["clip"], "-o", str(tmp_path / "x.png")], env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "vqgan_imagenet_f16_16384" in lines[0] and "--vqgan" in lines[0]


def test_ctrl_c_saves_the_current_image(model_files, tmp_path):
    output = tmp_path / "out.png"
    process = subprocess.Popen([sys.executable, "-m", "pipelines.vqgan_clip",
                                *cli_args(model_files, "a red circle", "--size", "32", "--steps", "100000",
                                          "--save-every", "1", "-o", str(output))],
                               cwd="/", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               # as from a shell: Ctrl-C's default action, whatever this test process inherited
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    partial = tmp_path / "out.partial.png"  # progress goes beside the output, not over it
    deadline = time.monotonic() + 120
    while not partial.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    assert partial.exists() and not output.exists()
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    recipe = read_recipe(output)
    assert recipe["interrupted"] is True and 0 < recipe["steps_done"] < 100000
    assert not partial.exists()  # removed once the output is saved
    assert "Traceback" not in err


@pytest.mark.parametrize("candidates", [1, 4])  # 4: the error comes while the starts are scored
def test_out_of_memory_names_the_size_asked_for_and_a_fix(pipe, monkeypatch, candidates):
    def exhausted(z):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.50 GiB (GPU 0; 8.00 GiB total)")

    monkeypatch.setattr(pipe.vqgan, "decode", exhausted)
    with pytest.raises(ToolkitError) as error:
        pipe("a red circle", size=64, steps=2, cutn=8, candidates=candidates, progress=False, save_every=0)
    message = str(error.value)
    assert "2.50 GiB" in message and "64x64" in message and "--size 48x48" in message and "--cutn 4" in message
    assert "\n" not in message


def test_bf16_runs_on_cpu_and_fp16_is_refused(pipe):
    out = pipe("a red circle", size=32, steps=2, cutn=2, precision="bf16", progress=False, save_every=0)
    assert out.images[0].size == (32, 32) and np.isfinite(out.history[-1]["loss"])
    with pytest.raises(InvalidInputError, match="fp16 needs a GPU"):
        pipe("a red circle", size=32, steps=1, precision="fp16", progress=False)
