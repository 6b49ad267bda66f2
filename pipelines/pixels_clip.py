"""Pixels-CLIP: optimise the image itself (a decorrelated-colour Fourier image, or raw RGB) under CLIP.

Python:  PixelsCLIPPipeline.from_pretrained()("a rocket on a launchpad").images[0]
CLI:     python -m pipelines.pixels_clip "a red circle" --clip-model shapes-tiny --size 64

The same loop, prompts, edits and options as VQGAN-CLIP, with no generator weights to download. The `fft`
parameterization (Lucid's and pixray's Fourier image, its colour axes at equal scale) optimises much better than
raw `rgb` pixels; `lucid` keeps Lucid's own, paler colour map.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

from pipelines.parsers import latent_parser, pixels_arguments

if __name__ == "__main__":  # parse first: --help and usage errors answer before the heavy imports below
    latent_parser("pipelines.pixels_clip", "PixelsCLIPPipeline", pixels_arguments).parse_args()

import torch

from generators.names import DEFAULT_SPECTRUM_DECAY
from generators.pixels import PARAMETERIZATIONS, PixelGenerator, load_pixels
from guidance.clip_models import load_clip_ensemble
from guidance.runtime import pick_device
from pipelines.common import run_cli
from pipelines.latent_optimization import DEFAULT_CLIP, LatentOptimizationPipeline, run_cli_main
from pipelines.registry import PipelineSpec


class PixelsCLIPPipeline(LatentOptimizationPipeline):
    """Pixels-CLIP: the image's own pixels (or spectrum) and a CLIP ensemble; each call optimises a fresh image."""

    name = "pixels_clip"
    model_key = "parameterization"
    default_size = (256, 256)
    default_lr = 0.05
    memory_profile = "pixels"

    @property
    def pixels(self) -> PixelGenerator:
        """The pixel generator being optimised."""
        return self.generator

    @classmethod
    def from_pretrained(cls, parameterization: str = "fft", clip_models: Sequence[str] = (DEFAULT_CLIP,),
                        device: str | torch.device | None = None,
                        spectrum_decay: float = DEFAULT_SPECTRUM_DECAY) -> "PixelsCLIPPipeline":
        """The pixel generator (`fft` or `lucid`, with its spectrum's decay, or `rgb`) and CLIP models
        (`NAME[:PRETRAINED][:WEIGHT]` specs)."""
        device = pick_device(device) if not isinstance(device, torch.device) else device
        return cls(load_pixels(parameterization, device, spectrum_decay), load_clip_ensemble(clip_models, device),
                   parameterization)

    def generator_recipe(self) -> dict[str, Any]:
        """A Fourier image's spectrum decay."""
        return {"spectrum_decay": self.pixels.decay} if self.pixels.parameterization != "rgb" else {}

    @classmethod
    def add_model_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """The pixel generator's option."""
        pixels_arguments(parser)

    @classmethod
    def from_arguments(cls, args: argparse.Namespace, clip_models: Sequence[str]) -> "PixelsCLIPPipeline":
        """The pipeline the parsed CLI options ask for."""
        return cls.from_pretrained(args.parameterization, clip_models, args.device, args.spectrum_decay)


SPEC = PipelineSpec(name=PixelsCLIPPipeline.name, title="Pixels-CLIP", module="pipelines.pixels_clip",
                    load=lambda model, clip_models, device, **options: PixelsCLIPPipeline.from_pretrained(
                        model, clip_models, device, **options),
                    model_label="Parameterization", model_flag="--parameterization",
                    model_choices=lambda: PARAMETERIZATIONS, offline_models=("fft",), load_options=("spectrum_decay",))


def main(argv: list[str]) -> int:
    """Run the CLI; returns the exit code."""
    return run_cli_main(PixelsCLIPPipeline, "pipelines.pixels_clip", argv)


if __name__ == "__main__":
    sys.exit(run_cli(main))
