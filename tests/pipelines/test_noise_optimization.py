"""`python -m pipelines.noise_optimization`: noise optimisation as a registered pipeline (its own CLI, the app's and
the batch's method), its call defaults, and one clear line for bad input."""

from __future__ import annotations

import inspect
import json
import shlex

import numpy as np
import pytest
import torch
from PIL import Image

from generators.diffusion import load_diffusion, random_clip_conditioned_model, save_diffusion
from generators.names import DEFAULT_CFG_SCALE
from guidance.images import read_recipe
from pipelines.batch import main as batch_main
from pipelines.batch import pipeline_class, pipeline_options
from pipelines.cli import call_defaults
from pipelines.clip_guided_diffusion import CLIPGuidedDiffusionPipeline
from pipelines.common import run_cli
from pipelines.latent_optimization import LatentOptimizationPipeline, with_call_settings
from pipelines.noise_optimization import NoiseOptimizationPipeline, main
from pipelines.parsers import latent_parser, noise_model_arguments
from pipelines.registry import get_pipeline_spec, pipeline_names

SHAPES = ["--model", "shapes-tiny", "--clip-model", "shapes-tiny", "--device", "cpu"]


def one_line_error(capsys, argv: list[str]) -> str:
    """Run the CLI expecting exit code 2 and one stderr line; return that line."""
    assert run_cli(main, argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_call_settings_are_the_signatures_defaults_and_the_calls():
    seen = {}

    def call(prompt: str = "", *, steps: int = 300, lr: float | None = None) -> dict:
        seen.update(steps=steps, lr=lr)
        return seen

    tuned = with_call_settings(call, {"steps": 50})
    assert call_defaults(tuned) == {"prompt": "", "steps": 50, "lr": None}
    assert tuned("x") == {"steps": 50, "lr": None} and tuned("x", steps=7, lr=0.1) == {"steps": 7, "lr": 0.1}
    with pytest.raises(TypeError, match="no option stpes"):
        with_call_settings(call, {"stpes": 50})


def test_noise_defaults_reach_the_call_the_cli_and_the_batch():
    defaults = call_defaults(NoiseOptimizationPipeline.__call__)
    for name, value in NoiseOptimizationPipeline.call_settings.items():
        assert defaults[name] == value, name
    assert call_defaults(LatentOptimizationPipeline.__call__)["steps"] == 300  # the base keeps its own
    args = latent_parser("pipelines.noise_optimization", "NoiseOptimizationPipeline",
                         noise_model_arguments).parse_args([])
    assert (args.steps, args.optimizer, args.grad_clip, args.best_step, args.candidates, args.augment, args.lr,
            args.size, args.sampler_steps) == (50, "nesterov", 0.1, True, 32, "geometric", 5.0, None, None)
    assert latent_parser("pipelines.noise_optimization", "NoiseOptimizationPipeline",
                         noise_model_arguments).parse_args(["--no-best-step"]).best_step is False
    assert set(inspect.signature(NoiseOptimizationPipeline.__call__).parameters) == set(
        inspect.signature(LatentOptimizationPipeline.__call__).parameters)


def test_every_registered_pipeline_has_one_class_for_batches():
    for name in pipeline_names():
        spec = get_pipeline_spec(name)
        assert pipeline_options(pipeline_class(spec), spec), name
    assert "noise_optimization" in pipeline_names()


@pytest.mark.parametrize("argv, message", [
    (["--sampler-steps", "0"], "1 to 1000 steps"),
    (["--steps", "0"], "--steps"),
    (["--cfg-scale", "3"], "--cfg-scale applies to text-conditioned models"),
    (["--candidates", "1000"], "--candidates"),
])
def test_bad_input_is_one_line(capsys, tmp_path, argv, message):
    line = one_line_error(capsys, ["a red circle", *SHAPES, *argv, "-o", str(tmp_path / "x.png")])
    assert line.startswith("error:") and message in line, line


def test_cli_writes_the_image_with_its_recipe_and_the_command_remakes_it(tmp_path):
    out = tmp_path / "noise.png"
    argv = ["a red circle", *SHAPES, "--sampler-steps", "2", "--steps", "3", "--cutn", "4", "--candidates", "3",
            "--seed", "5", "--save-every", "0", "-o", str(out)]
    assert main(argv) == 0
    recipe = read_recipe(out)
    assert recipe["pipeline"] == "noise_optimization" and recipe["model"] == "shapes-tiny"
    assert (recipe["sampler_steps"], recipe["steps"], recipe["candidates"], recipe["optimizer"],
            recipe["grad_clip"], recipe["best_step"], recipe["augment"]) == (2, 3, 3, "nesterov", 0.1, True, "geometric")
    assert Image.open(out).size == (32, 32)
    again = shlex.split(recipe["command"])
    assert again[:3] == ["python", "-m", "pipelines.noise_optimization"]
    again[again.index("-o") + 1] = str(tmp_path / "again.png")
    assert main(again[3:]) == 0
    before, after = (np.asarray(Image.open(p), dtype=int) for p in (out, tmp_path / "again.png"))
    assert np.abs(before - after).max() <= 1


def test_a_batch_job_turns_best_step_off_and_its_command_says_so(tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"prompt": "a red circle", "id": "last", "best_step": False}) + "\n")
    out = tmp_path / "out"
    assert run_cli(batch_main, [str(jobs), "--output-dir", str(out), "--pipeline", "noise_optimization", *SHAPES,
                                "--steps", "2", "--cutn", "2", "--candidates", "2"]) == 0
    recipe = read_recipe(out / "last.png")
    assert recipe["pipeline"] == "noise_optimization" and "best_step" not in recipe
    assert "--no-best-step" in shlex.split(recipe["command"])


def test_a_batch_sets_the_load_options_once_records_them_and_its_command_remakes_the_image(tmp_path):
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("a red circle\n")
    out = tmp_path / "out"
    text_model = ["--model", "shapes-tiny-text", *SHAPES[2:]]
    argv = [str(jobs), "--output-dir", str(out), "--pipeline", "noise_optimization", *text_model, "--sampler-steps",
            "2", "--cfg-scale", "2", "--steps", "2", "--cutn", "2", "--candidates", "2"]
    assert run_cli(batch_main, argv) == 0
    recipe = read_recipe(out / "line-1.png")
    assert recipe["sampler_steps"] == 2 and recipe["cfg_scale"] == 2.0
    command = shlex.split(recipe["command"])
    assert command[command.index("--sampler-steps") + 1] == "2" and command[command.index("--cfg-scale") + 1] == "2.0"
    args = command[3:]
    args[args.index("--output") + 1] = str(tmp_path / "again.png")
    assert main(args) == 0
    before, after = (np.asarray(Image.open(p), dtype=int) for p in (out / "line-1.png", tmp_path / "again.png"))
    assert np.abs(before - after).max() <= 1
    first = json.loads((out / "manifest.jsonl").read_text().splitlines()[0])["fingerprint"]
    argv[argv.index("--sampler-steps") + 1] = "3"  # another load setting: the job is redone
    assert run_cli(batch_main, argv) == 0
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert records[-1]["fingerprint"] != first and read_recipe(out / "line-1.png")["sampler_steps"] == 3


def test_a_job_cannot_set_a_load_option(tmp_path, capsys):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"prompt": "a red circle", "sampler_steps": 3}) + "\n")
    assert run_cli(batch_main, [str(jobs), "--output-dir", str(tmp_path / "out"), "--pipeline", "noise_optimization",
                                *SHAPES]) == 2
    error = capsys.readouterr().err.strip()
    assert "'sampler_steps' is set for the whole batch" in error and "\n" not in error


def test_a_clip_conditioned_model_follows_the_prompts_positive_texts_with_its_cfg_scale(tmp_path):
    """A pixel DDPM conditioned on CLIP text embeddings: the UNet follows the prompt's positive texts (the negative
    ones are classifier-free guidance's negative), and the recipe records the scale."""
    folder = save_diffusion(random_clip_conditioned_model(1), tmp_path / "conditioned")
    out = tmp_path / "conditioned.png"
    argv = ["a red circle|a blue square:-1", "--model", str(folder), "--clip-model", "shapes-tiny", "--device", "cpu",
            "--sampler-steps", "2", "--steps", "2", "--cutn", "4", "--candidates", "2", "--cfg-scale", "2",
            "--save-every", "0", "-o", str(out)]
    assert main(argv) == 0
    assert read_recipe(out)["cfg_scale"] == 2.0
    pipe = NoiseOptimizationPipeline.from_pretrained(str(folder), ["shapes-tiny"], "cpu", sampler_steps=2, cfg_scale=2.0)
    pipe.prepare("a red circle|a blue square:-1")
    expected = pipe.model.condition("a red circle", "a blue square", 2.0)
    condition = pipe.generator.condition
    assert torch.equal(condition.embeddings, expected.embeddings) and torch.equal(condition.negative, expected.negative)


def test_without_cfg_scale_both_diffusion_pipelines_use_the_scale_the_models_folder_recommends(tmp_path):
    model = random_clip_conditioned_model(1)
    model.info["cfg_scale"] = 2.5
    folder = str(save_diffusion(model, tmp_path / "recommends"))
    noise = NoiseOptimizationPipeline.from_pretrained(folder, ["shapes-tiny"], "cpu", sampler_steps=2)
    noise.prepare("a red circle")
    assert noise.generator.condition.scale == 2.5
    sampler = CLIPGuidedDiffusionPipeline.from_pretrained(folder, ["shapes-tiny"], device="cpu")
    out = sampler("a red circle", steps=2, seed=0, cutn=2)
    assert out.recipe["cfg_scale"] == 2.5
    silent = save_diffusion(random_clip_conditioned_model(1), tmp_path / "silent")
    assert load_diffusion(silent).default_cfg_scale == DEFAULT_CFG_SCALE


def test_a_masked_edit_blends_its_source_into_the_sampler_and_the_next_call_samples_freely():
    pipe = NoiseOptimizationPipeline.from_pretrained("shapes-tiny", ["shapes-tiny"], device="cpu")
    source = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(32, 32)
    mask[8:24, 8:24] = 1
    quick = dict(steps=1, cutn=2, candidates=1, progress=False, save_every=0, seed=0)
    pipe("a red circle", init_image=source, mask=mask, **quick)
    samples, kept_mask = pipe.generator.known
    assert torch.allclose(samples, source * 2 - 1, atol=1 / 255) and torch.equal(kept_mask[0, 0], mask)
    pipe("a red circle", **quick)
    assert pipe.generator.known is None
