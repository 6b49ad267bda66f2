"""Pixels-CLIP: the shared latent-optimisation loop on the pixels generator (API, CLI, edits, meaning)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from generators.pixels import PixelGenerator
from generators.registry import load_generator
from guidance import ImagePrompt, read_recipe, save_clip
from pipelines.common import run_cli
from pipelines.latent_optimization import LatentOptimizationPipeline
from pipelines.pixels_clip import PixelsCLIPPipeline, main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory, tiny_clip) -> str:
    """The tiny CLIP saved as a safetensors file."""
    path = tmp_path_factory.mktemp("models") / "clip.safetensors"
    save_clip(tiny_clip, path)
    return str(path)


@pytest.fixture(scope="module")
def pipe(tiny_clip) -> PixelsCLIPPipeline:
    """Pixels-CLIP (Fourier image) on the tiny CLIP."""
    return PixelsCLIPPipeline(PixelGenerator("fft"), [(tiny_clip, 1.0)], "fft")


@pytest.mark.parametrize("parameterization", ["fft", "rgb"])
def test_loss_falls_towards_an_image_prompt(tiny_clip, parameterization):
    pipe = PixelsCLIPPipeline(PixelGenerator(parameterization), [(tiny_clip, 1.0)], parameterization)
    target = ImagePrompt(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    out = pipe(image_prompts=[target], size=32, steps=20, seed=0, cutn=8, augment="none", progress=False, save_every=0)
    losses = [h["loss"] for h in out.history]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])


def test_same_seed_same_image_and_the_recipe_names_the_pipeline(pipe):
    kwargs = dict(size=32, steps=3, cutn=4, progress=False, save_every=0)
    first = pipe("a red circle", seed=7, **kwargs)
    again = pipe("a red circle", seed=7, **kwargs)
    other = pipe("a red circle", seed=8, **kwargs)
    assert np.array_equal(np.asarray(first.images[0]), np.asarray(again.images[0]))
    assert not np.array_equal(np.asarray(first.images[0]), np.asarray(other.images[0]))
    assert first.recipe["pipeline"] == "pixels_clip" and first.recipe["parameterization"] == "fft"
    assert first.recipe["lr"] == PixelsCLIPPipeline.default_lr


def test_odd_sizes_round_down_to_the_spectrum_factor_with_a_notice(pipe):
    with pytest.warns(UserWarning, match="rounded down to 32x30"):
        image = pipe("a red circle", size="33x31", steps=1, cutn=2, seed=0, progress=False, save_every=0).images[0]
    assert image.size == (32, 30)


def test_masked_edit_keeps_the_pixels_outside_the_mask(pipe, tmp_path):
    photo = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(photo).save(tmp_path / "photo.png")
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    edited = np.asarray(pipe("a blue square", size=32, steps=3, cutn=4, seed=0, init_image=tmp_path / "photo.png",
                             mask=tmp_path / "mask.png", progress=False, save_every=0).images[0]).astype(int)
    outside = mask == 0
    assert np.abs(edited[outside] - photo[outside]).max() <= 1


def test_cli_writes_a_png_whose_recipe_command_reproduces_it(clip_file, tmp_path):
    out = tmp_path / "out.png"
    args = ["a red circle", "--clip-model", clip_file, "--size", "32", "--steps", "3", "--cutn", "4", "--seed", "5",
            "--device", "cpu", "--save-every", "0", "-o", str(out)]
    assert run_cli(main, args) == 0
    recipe = read_recipe(out)
    assert recipe["command"].startswith("python -m pipelines.pixels_clip 'a red circle'")
    assert recipe["parameterization"] == "fft" and recipe["seed"] == 5
    again = tmp_path / "again.png"
    assert run_cli(main, [*args[:-1], str(again)]) == 0
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(again)))


def test_cli_spectrum_decay_reaches_the_generator_and_the_recipe_and_bad_values_are_one_line(clip_file, tmp_path,
                                                                                             capsys):
    out = tmp_path / "smooth.png"
    args = ["a red circle", "--clip-model", clip_file, "--size", "32", "--steps", "2", "--cutn", "4", "--seed", "5",
            "--device", "cpu", "--save-every", "0", "-o", str(out)]
    assert run_cli(main, [*args, "--spectrum-decay", "1.5"]) == 0
    recipe = read_recipe(out)
    assert recipe["spectrum_decay"] == 1.5 and "--spectrum-decay 1.5" in recipe["command"]
    assert run_cli(main, [*args, "--spectrum-decay", "-1"]) == 2
    assert run_cli(main, [*args, "--parameterization", "rgb", "--spectrum-decay", "2"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()[-2:]
    assert "--spectrum-decay must be a non-negative number, got -1.0" in errors[0]
    assert "--spectrum-decay applies to the Fourier parameterizations (fft, lucid), not rgb" in errors[1]


def test_a_batch_loads_the_fft_image_with_its_spectrum_decay_and_records_it(clip_file, tmp_path):
    from pipelines.batch import main as batch_main

    jobs = tmp_path / "jobs.txt"
    jobs.write_text("a red circle\n")
    assert run_cli(batch_main, [str(jobs), "--output-dir", str(tmp_path / "out"), "--pipeline", "pixels_clip",
                                "--parameterization", "fft", "--clip-model", clip_file, "--device", "cpu",
                                "--spectrum-decay", "1.5", "--size", "32", "--steps", "2", "--cutn", "2"]) == 0
    recipe = read_recipe(tmp_path / "out" / "line-1.png")
    assert recipe["spectrum_decay"] == 1.5 and "--spectrum-decay 1.5" in recipe["command"]


def test_cli_bad_parameterization_is_one_line_and_exit_2(clip_file):
    result = subprocess.run([sys.executable, "-m", "pipelines.pixels_clip", "x", "--parameterization", "wavelet"],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2 and "invalid choice: 'wavelet'" in result.stderr


def test_the_generic_loop_runs_any_registered_generator(tiny_clip):
    loop = LatentOptimizationPipeline(load_generator("vqgan", "shapes-tiny", device="cpu"), [(tiny_clip, 1.0)],
                                      "shapes-tiny")
    out = loop("a red circle", size=32, steps=2, cutn=2, seed=0, progress=False, save_every=0)
    assert out.images[0].size == (32, 32) and out.recipe["generator"] == "shapes-tiny"
    assert loop.size_factor == loop.generator.factor


@pytest.mark.slow
def test_cli_red_circle_on_the_shipped_clip_is_red(tmp_path):
    """The issue's check, at the CLI's defaults: `pixels_clip "a red circle" --clip-model shapes-tiny --size 64`."""
    from training.colour_stats import dominant_colour
    out = tmp_path / "red.png"
    result = subprocess.run([sys.executable, "-m", "pipelines.pixels_clip", "a red circle", "--clip-model",
                             "shapes-tiny", "--size", "64", "--seed", "0", "--device", "cpu", "-o", str(out)],
                            capture_output=True, text=True, cwd=REPO, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert dominant_colour(Image.open(out)) == "red"
