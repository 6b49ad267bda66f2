"""VQGAN-CLIP: optimise a VQGAN latent until the decoded image matches text and image prompts under CLIP.

Python:  VQGANCLIPPipeline.from_pretrained()("a rocket on a launchpad", steps=300).images[0]
CLI:     python -m pipelines.vqgan_clip "a rocket on a launchpad" -o rocket.png

Editing: `init_image` + `mask` changes only the white part of the mask; `init_image` + `source_text`
moves the image along the CLIP direction from the source text to the prompt (DiffusionCLIP-style loss).
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from pipelines.parsers import DEFAULT_VQGAN, latent_parser, vqgan_arguments

if __name__ == "__main__":  # parse first: --help and usage errors answer before the heavy imports below
    latent_parser("pipelines.vqgan_clip", "VQGANCLIPPipeline", vqgan_arguments).parse_args()

import torch

from generators.vqgan import VQGAN, known_vqgan_names, load_vqgan
from guidance.clip_models import load_clip_ensemble
from guidance.runtime import pick_device
from pipelines.common import run_cli
from pipelines.latent_optimization import DEFAULT_CLIP, LatentOptimizationPipeline, run_cli_main
from pipelines.registry import PipelineSpec


class VQGANCLIPPipeline(LatentOptimizationPipeline):
    """VQGAN-CLIP: a VQGAN and a CLIP ensemble, loaded once; each call optimises a fresh latent."""

    name = "vqgan_clip"
    model_key = "vqgan"
    default_size = (320, 320)  # fits an 8 GB GPU with ViT-B/32 and 32 cutouts in fp32
    default_lr = 0.1

    def __init__(self, vqgan: VQGAN, clip_models: Sequence, vqgan_name: str = "vqgan"):
        super().__init__(vqgan, clip_models, vqgan_name)

    @property
    def vqgan(self) -> VQGAN:
        """The VQGAN being optimised through."""
        return self.generator

    @classmethod
    def from_pretrained(cls, vqgan: str = DEFAULT_VQGAN, clip_models: Sequence[str] = (DEFAULT_CLIP,),
                        device: str | torch.device | None = None, vqgan_config: str | None = None,
                        allow_pickle: bool = False) -> "VQGANCLIPPipeline":
        """Load the VQGAN (name, path or hub repo) and CLIP models (`NAME[:PRETRAINED][:WEIGHT]` specs)."""
        device = pick_device(device) if not isinstance(device, torch.device) else device
        members = load_clip_ensemble(clip_models, device)
        model = load_vqgan(vqgan, config=vqgan_config, device=device, allow_pickle=allow_pickle)
        return cls(model, members, vqgan_name=str(vqgan))

    @classmethod
    def add_model_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """The VQGAN options."""
        vqgan_arguments(parser)

    @classmethod
    def from_arguments(cls, args: argparse.Namespace, clip_models: Sequence[str]) -> "VQGANCLIPPipeline":
        """The pipeline the parsed CLI options ask for."""
        return cls.from_pretrained(args.vqgan, clip_models, args.device, args.vqgan_config, args.allow_pickle)


SPEC = PipelineSpec(name=VQGANCLIPPipeline.name, title="VQGAN-CLIP", module="pipelines.vqgan_clip",
                    load=lambda model, clip_models, device: VQGANCLIPPipeline.from_pretrained(model, clip_models, device),
                    model_label="VQGAN", model_flag="--vqgan", model_choices=known_vqgan_names,
                    offline_models=("shapes-tiny",))


def main(argv: list[str]) -> int:
    """Run the CLI; returns the exit code."""
    return run_cli_main(VQGANCLIPPipeline, "pipelines.vqgan_clip", argv)


if __name__ == "__main__":
    sys.exit(run_cli(main))
