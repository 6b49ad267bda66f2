"""Many images in one run: output names, per-image recipes, batched latent optimisation, ranking, cutout batches."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from guidance import InvalidInputError, read_recipe
from pipelines.common import PipelineOutput, output_paths


def test_output_paths_one_is_the_output_several_are_numbered_from_1():
    assert output_paths("out/a.png", 1) == [Path("out/a.png")]
    assert output_paths(Path("out/a.png"), 3) == [Path("out/a-1.png"), Path("out/a-2.png"), Path("out/a-3.png")]
    with pytest.raises(InvalidInputError, match="must end in .png"):
        output_paths("a.jpg", 2)


def test_each_image_carries_its_own_recipe_entries(tmp_path):
    images = [Image.new("RGB", (4, 4)), Image.new("RGB", (4, 4), "red")]
    result = PipelineOutput(images, [], recipe={"prompt": "x", "seed": 5},
                            image_recipes=[{"index": 1}, {"index": 2, "seed": 6}])
    assert result.recipe_of(1) == {"prompt": "x", "seed": 6, "index": 2}
    result.save(tmp_path / "b.png", 1)
    assert read_recipe(tmp_path / "b.png")["index"] == 2 and read_recipe(tmp_path / "b.png")["seed"] == 6


import shlex

import numpy as np
import torch

from guidance.clip_loss import CLIPLoss
from guidance.cutouts import MakeCutouts
from pipelines.latent_optimization import backward_over_cutout_batches, clip_per_image_
from pipelines.vqgan_clip import main as vqgan_main

SHAPES = ["--vqgan", "shapes-tiny", "--clip-model", "shapes-tiny", "--device", "cpu", "--size", "32", "--cutn", "4",
          "--steps", "3", "--save-every", "0", "--seed", "7"]


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def test_a_batch_of_2_writes_2_images_and_image_2_is_remade_by_its_recipe_command(tmp_path):
    assert vqgan_main(["a red circle", *SHAPES, "--num-images", "2", "-o", str(tmp_path / "b.png")]) == 0
    first, second = read_recipe(tmp_path / "b-1.png"), read_recipe(tmp_path / "b-2.png")
    assert (first["index"], second["index"], second["num_images"], second["seed"]) == (1, 2, 2, 7)
    assert not (tmp_path / "b.png").exists()
    args = shlex.split(second["command"])[3:]
    args[args.index("-o") + 1] = str(tmp_path / "again.png")
    assert vqgan_main(args) == 0
    assert np.abs(pixels(tmp_path / "b-2.png") - pixels(tmp_path / "again-2.png")).max() <= 1
    assert np.abs(pixels(tmp_path / "b-1.png") - pixels(tmp_path / "b-2.png")).max() > 1  # two different images


def test_keep_best_keeps_k_ranked_images_with_their_scores(tmp_path, capsys):
    from pipelines.common import run_cli
    assert run_cli(vqgan_main, ["a red circle", *SHAPES, "--num-images", "3", "--keep-best", "2",
                                "-o", str(tmp_path / "k.png")]) == 0
    recipes = [read_recipe(tmp_path / f"k-{r}.png") for r in (1, 2)]
    assert not (tmp_path / "k-3.png").exists()
    assert [r["rank"] for r in recipes] == [1, 2] and recipes[0]["clip_score"] >= recipes[1]["clip_score"]
    assert recipes[0]["judge"] == "guiding models" and "optimistic" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--num-images", "0"], "--num-images must be between 1"),
    (["--num-images", "2", "--keep-best", "3"], "--keep-best must be between 1 and 2"),
    (["--judge-model", "shapes-tiny"], "add --keep-best"),
    (["--cutn-batches", "0"], "--cutn-batches must be between 1"),
])
def test_bad_batch_settings_are_one_line(tmp_path, capsys, extra, message):
    from pipelines.common import run_cli
    assert run_cli(vqgan_main, ["a red circle", *SHAPES, *extra, "-o", str(tmp_path / "x.png")]) == 2
    assert message in capsys.readouterr().err


def test_cutn_batches_gradient_is_the_mean_of_the_batches_gradients(tiny_clip):
    loss = CLIPLoss(tiny_clip, "a red circle", cutouts=MakeCutouts(tiny_clip.image_size, cutn=8))
    images = torch.rand(2, 3, 48, 48)
    batched = images.clone().requires_grad_(True)
    torch.manual_seed(3)
    values, _ = backward_over_cutout_batches(loss, batched, 2, torch.enable_grad)
    reference = images.clone().requires_grad_(True)
    torch.manual_seed(3)
    mean = (loss(reference, reduction="none") + loss(reference, reduction="none")) / 2  # same RNG, same cutouts
    mean.sum().backward()
    assert torch.allclose(values, mean.detach(), atol=1e-6)
    assert torch.allclose(batched.grad, reference.grad, atol=1e-7, rtol=1e-5)


def test_grad_clip_clips_each_image_alone():
    grad = torch.stack([torch.full((2, 3), 10.0), torch.full((2, 3), 0.01)])
    clip_per_image_(grad, 1.0)
    assert torch.allclose(grad[0].norm(), torch.tensor(1.0), atol=1e-5) and torch.allclose(grad[1], torch.full((2, 3), 0.01))


@pytest.mark.slow
def test_compile_runs_on_the_tiny_models(tmp_path):
    assert vqgan_main(["a red circle", *SHAPES, "--compile", "-o", str(tmp_path / "c.png")]) == 0
    assert read_recipe(tmp_path / "c.png")["compile"] is True


DIFFUSION = ["--model", "shapes-tiny", "--clip-model", "shapes-tiny", "--device", "cpu", "--cutn", "4",
             "--save-every", "1"]


@pytest.mark.parametrize("method", [["--method", "sampler", "--steps", "3"], ["--method", "noise", "--steps", "2", "--iterations", "2"]],
                         ids=["sampler", "noise"])
def test_guided_diffusion_keeps_the_best_k_of_a_batch_and_no_partial_files(tmp_path, capsys, method):
    from pipelines.clip_guided_diffusion import main as diffusion_main
    from pipelines.common import run_cli
    assert run_cli(diffusion_main, ["a red circle", *DIFFUSION, *method, "--num-images", "3", "--keep-best", "2",
                                    "--judge-model", "shapes-tiny-zh", "-o", str(tmp_path / "k.png")]) == 0
    recipes = [read_recipe(tmp_path / f"k-{r}.png") for r in (1, 2)]
    assert [r["rank"] for r in recipes] == [1, 2] and recipes[0]["clip_score"] >= recipes[1]["clip_score"]
    assert {r["judge"] for r in recipes} == {"shapes-tiny-zh"} and len({r["index"] for r in recipes}) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k-1.png", "k-2.png"]


def test_guided_diffusion_refuses_keep_best_for_an_edit_in_one_line(tmp_path, capsys):
    from pipelines.clip_guided_diffusion import main as diffusion_main
    from pipelines.common import run_cli
    photo = tmp_path / "photo.png"
    Image.new("RGB", (32, 32), "red").save(photo)
    assert run_cli(diffusion_main, ["a blue circle", *DIFFUSION, "--init-image", str(photo), "--keep-best", "1",
                                    "-o", str(tmp_path / "e.png")]) == 2
    assert "--keep-best ranks the images of --num-images" in capsys.readouterr().err
