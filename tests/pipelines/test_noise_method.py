"""`python -m pipelines.clip_guided_diffusion --method noise`: noise optimisation of the shapes DDPM through the
shared latent-optimisation loop, and one clear line for bad input."""

from __future__ import annotations

import shlex

import numpy as np
import pytest
import torch
from PIL import Image

from generators.diffusion import folder_info, random_pixel_model, save_diffusion
from guidance.images import read_recipe
from pipelines.clip_guided_diffusion import build_parser, default_method, main
from pipelines.noise_optimization import NoiseOptimizationPipeline
from pipelines.parsers import REGION_CANDIDATES
from pipelines.common import run_cli
from pipelines.starts import best_candidates

SHAPES = ["--model", "shapes-tiny", "--clip-model", "shapes-tiny", "--device", "cpu"]


def one_line_error(capsys, argv: list[str]) -> str:
    """Run the CLI expecting exit code 2 and one stderr line; return that line."""
    with pytest.raises(SystemExit) as exited:
        code = run_cli(main, argv)
        raise SystemExit(code)
    assert exited.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_unknown_method_is_one_line(capsys):
    assert "--method" in one_line_error(capsys, ["a red circle", "--method", "magic", *SHAPES])


def test_too_many_steps_for_a_few_step_model_is_one_line(capsys, monkeypatch):
    from generators.diffusion import models

    monkeypatch.setattr(models.DiffusionModel, "info", property(lambda self: {"distilled_steps": 1},
                                                                 lambda self, value: None), raising=False)
    line = one_line_error(capsys, ["a red circle", "--method", "noise", "--steps", "50", *SHAPES, "-o", "x.png"])
    assert line.startswith("error:") and "1 to 1 steps" in line and "got 50 sampler steps; ask for 1" in line


def test_sampler_only_options_are_refused_with_noise_in_one_line(capsys, tmp_path):
    line = one_line_error(capsys, ["a red circle", "--method", "noise", "--eta", "0.5", *SHAPES,
                                   "-o", str(tmp_path / "x.png")])
    assert "--eta applies to --method sampler" in line


@pytest.mark.parametrize("flag", ["--iterations", "--contrast"])
def test_noise_only_options_are_refused_with_the_sampler_in_one_line(capsys, tmp_path, flag):
    line = one_line_error(capsys, ["a red circle", "--method", "sampler", flag, "2", *SHAPES,
                                   "-o", str(tmp_path / "x.png")])
    assert f"{flag} applies to --method noise" in line


def test_candidates_with_the_sampler_outside_a_mask_is_one_line(capsys, tmp_path):
    line = one_line_error(capsys, ["a red circle", "--method", "sampler", "--candidates", "2", *SHAPES,
                                   "-o", str(tmp_path / "x.png")])
    assert "--candidates with --method sampler applies to edits inside a --mask or with --source-text" in line


def test_the_sampler_cli_passes_candidates_to_a_masked_edit(tmp_path):
    source, mask, out = tmp_path / "source.png", tmp_path / "mask.png", tmp_path / "edit.png"
    Image.fromarray(np.full((32, 32, 3), 128, dtype=np.uint8)).save(source)
    Image.fromarray(np.pad(np.full((16, 16), 255, dtype=np.uint8), 8)).save(mask)
    base = ["a red circle", "--init-image", str(source), "--mask", str(mask), "--steps", "2", "--cutn", "2",
            "--seed", "1", *SHAPES, "--save-every", "0"]
    assert main([*base, "--candidates", "3", "-o", str(out)]) == 0
    assert read_recipe(out)["candidates"] == 3 and read_recipe(out)["pipeline"] == "clip_guided_diffusion"
    assert main([*base, "-o", str(tmp_path / "default.png")]) == 0
    assert read_recipe(tmp_path / "default.png")["candidates"] == REGION_CANDIDATES  # when not given


@pytest.mark.parametrize("recommends", [None, "magic"])
def test_without_method_a_model_without_a_known_recommendation_is_guided_by_the_sampler(capsys, tmp_path, recommends):
    model = random_pixel_model()
    if recommends:
        model.info["method"] = recommends
    folder = save_diffusion(model, tmp_path / "plain")
    line = one_line_error(capsys, ["a red circle", "--iterations", "2", "--model", str(folder), "--clip-model",
                                   "shapes-tiny", "--device", "cpu", "-o", str(tmp_path / "x.png")])
    assert "--iterations applies to --method noise, not sampler" in line


@pytest.mark.parametrize("model", ["shapes-tiny", "shapes-tiny-text"])
def test_without_method_the_shipped_ddpms_use_the_noise_method_they_recommend_and_edits_the_sampler(model):
    """bench/meaning.py measured noise optimisation better on both shipped DDPMs, and their folders say so; edits
    and sampler-only options pick the sampler, whose edits it measured better."""
    parser = build_parser()
    assert folder_info(model)["method"] == "noise" and folder_info("owner/hub-model") == {}
    for extra, method in [([], "noise"), (["--iterations", "5"], "noise"), (["--eta", "0.5"], "sampler"),
                          (["--source-text", "a red circle", "--init-image", "red.png"], "sampler"),
                          (["--mask", "mask.png", "--init-image", "red.png"], "sampler")]:
        args = parser.parse_args(["a blue circle", "--model", model, *extra])
        assert default_method(args, parser) == method, extra


def test_best_candidates_keeps_each_images_lowest_loss_start():
    # 3 candidates for each of 2 images: image k's candidates are rows k, k + 2, k + 4.
    latents = torch.arange(6, dtype=torch.float32).view(6, 1).repeat(1, 4)
    losses = {0: 5.0, 1: 1.0, 2: 0.5, 3: 3.0, 4: 9.0, 5: 2.0}  # image 0: rows 0, 2, 4; image 1: rows 1, 3, 5
    chosen = best_candidates(latents, 2, lambda part: torch.tensor([losses[int(r[0])] for r in part]), chunk=4)
    assert chosen[:, 0].tolist() == [2.0, 1.0]


def test_zero_iterations_is_one_line(capsys, tmp_path):
    line = one_line_error(capsys, ["a red circle", "--method", "noise", "--iterations", "0", *SHAPES,
                                   "-o", str(tmp_path / "x.png")])
    assert "--iterations" in line


@pytest.mark.slow
def test_noise_method_cli_writes_the_best_image_with_its_recipe(tmp_path):
    out = tmp_path / "noise.png"
    assert main(["a red circle", "--method", "noise", "--steps", "2", "--iterations", "4", "--cutn", "4",
                 "--candidates", "3", "--contrast", "0.25", "--seed", "3", *SHAPES, "-o", str(out),
                 "--save-every", "0"]) == 0
    recipe = read_recipe(out)
    assert recipe["candidates"] == 3 and recipe["contrast"] == 0.25
    assert recipe["pipeline"] == "noise_optimization" and recipe["method"] == "noise"
    assert recipe["sampler_steps"] == 2 and recipe["optimizer"] == "nesterov" and recipe["grad_clip"] == 0.1
    assert recipe["best_step"] is True and 1 <= recipe["best_at_step"] <= 4 and recipe["steps_done"] == 4
    assert Image.open(out).size == (32, 32)


@pytest.mark.slow
def test_noise_method_makes_a_batch_and_image_2_is_remade_by_its_recipe_command(tmp_path):
    """Without --method, shapes-tiny's recommended noise method; its command names the method."""
    base = ["a red circle", "--steps", "2", "--iterations", "3", "--cutn", "4", "--seed", "3",
            *SHAPES, "--save-every", "0"]
    assert main([*base, "--num-images", "2", "-o", str(tmp_path / "b.png")]) == 0
    first, second = read_recipe(tmp_path / "b-1.png"), read_recipe(tmp_path / "b-2.png")
    assert (first["index"], second["index"], second["num_images"], second["method"]) == (1, 2, 2, "noise")
    args = shlex.split(second["command"])[3:]
    assert args[:2] == ["--method", "noise"]
    args[args.index("-o") + 1] = str(tmp_path / "again.png")
    assert main(args) == 0
    pixels = [np.asarray(Image.open(tmp_path / name), dtype=int) for name in ("b-1.png", "b-2.png", "again-2.png")]
    assert np.abs(pixels[1] - pixels[2]).max() <= 1 and np.abs(pixels[0] - pixels[1]).max() > 1


def test_best_step_returns_the_image_of_the_lowest_loss():
    noise = NoiseOptimizationPipeline.from_pretrained("shapes-tiny", ["shapes-tiny"], device="cpu", sampler_steps=1)
    result = noise("a blue square", steps=5, cutn=4, seed=0, lr=50.0, progress=False, save_every=1)
    losses = [entry["loss"] for entry in result.history]
    best = result.recipe["best_at_step"]
    assert losses[best - 1] == min(losses)
    assert result.frames[-1].tolist() == result.frames[best - 1].tolist()  # the final image is the best step's
