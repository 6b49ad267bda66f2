"""Every CLI answers `--help` and usage errors before its heavy imports: no torch, CLIP, kornia, diffusers,
transformers or gradio is imported (checked with `python -X importtime`, which lists every import; no timing is
asserted). The defaults the parsers read from the source are those the code runs with."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = {"torch", "torchvision", "open_clip", "kornia", "diffusers", "transformers", "accelerate", "gradio"}
CLIS = ["pipelines.vqgan_clip", "pipelines.pixels_clip", "pipelines.clip_guided_diffusion", "pipelines.latent_optimization",
        "pipelines.batch", "pipelines.zero_shot", "pipelines.clip_score", "apps.gradio_app"]


def run(module: str, *args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run `python -X importtime -m MODULE ARGS...`; returns the result and the top-level packages it imported."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", module, *args], capture_output=True, text=True,
                            cwd=ROOT, timeout=300)
    imported = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in result.stderr.splitlines()
                if line.startswith("import time:") and "|" in line}
    return result, imported


@pytest.mark.parametrize("module", CLIS)
def test_help_imports_nothing_heavy(module):
    result, imported = run(module, "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(f"usage: python -m {module}")
    assert "argparse" in imported  # the import list was read
    assert not imported & HEAVY


@pytest.mark.parametrize("module, args", [
    ("pipelines.vqgan_clip", ["a cat", "--steps", "1e9"]),
    ("pipelines.pixels_clip", ["a cat", "--no-such-option"]),
    ("pipelines.clip_guided_diffusion", ["a cat", "--scheduler", "euler"]),
    ("pipelines.batch", ["jobs.txt"]),
    ("pipelines.zero_shot", ["cat.png"]),
    ("apps.gradio_app", ["--port", "x"]),
])
def test_usage_errors_answer_in_one_line_before_the_heavy_imports(module, args):
    result, imported = run(module, *args)
    errors = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    assert result.returncode == 2
    assert len(errors) == 1 and errors[0].startswith("error: ") and errors[0].endswith(f"see python -m {module} --help")
    assert not imported & HEAVY


def test_parser_defaults_read_from_the_source_are_those_of_the_code():
    from pipelines.cli import call_defaults, source_literals
    from pipelines.clip_guided_diffusion import CLIPGuidedDiffusionPipeline
    from pipelines.diffusionclip import finetune
    from pipelines.latent_optimization import LatentOptimizationPipeline
    from pipelines.pixels_clip import PixelsCLIPPipeline
    from pipelines.vqgan_clip import VQGANCLIPPipeline

    for module, qualname, function in [
            ("pipelines.latent_optimization", "LatentOptimizationPipeline.__call__", LatentOptimizationPipeline.__call__),
            ("pipelines.clip_guided_diffusion", "CLIPGuidedDiffusionPipeline.__call__",
             CLIPGuidedDiffusionPipeline.__call__),
            ("pipelines.diffusionclip", "finetune", finetune)]:
        literals, defaults = source_literals(module, qualname), call_defaults(function)
        assert literals and literals == {name: defaults[name] for name in literals}
    for module, pipeline in [("pipelines.latent_optimization", LatentOptimizationPipeline),
                             ("pipelines.vqgan_clip", VQGANCLIPPipeline), ("pipelines.pixels_clip", PixelsCLIPPipeline)]:
        attributes = source_literals(module, pipeline.__name__)
        assert (attributes["default_size"], attributes["default_lr"]) == (pipeline.default_size, pipeline.default_lr)



def test_the_app_parser_defaults_are_those_of_its_config():
    from apps.gradio_app import build_parser
    from apps.handlers import AppConfig

    args, config = build_parser().parse_args([]), AppConfig()
    for name in ("device", "max_queue", "max_size", "max_steps", "max_cutn", "max_num_images", "max_upload_pixels",
                 "output_dir"):
        assert getattr(args, name) == getattr(config, name), name

