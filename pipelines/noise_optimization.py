"""Noise optimisation (ReNO): optimise a diffusion model's starting noise, through a short sampler, until CLIP likes the image.

Python:  NoiseOptimizationPipeline.from_pretrained("shapes-tiny", ["shapes-tiny"])("a red circle").images[0]
CLI:     python -m pipelines.noise_optimization "a red circle" --model shapes-tiny --clip-model shapes-tiny -o out.png

The shared latent-optimisation loop (pipelines.latent_optimization) over a NoiseGenerator: `--sampler-steps` K DDIM
steps of a multi-step model (one for one-step models such as sd-turbo), backpropagated with gradient checkpointing;
`--steps` are the optimisation's iterations. Prompts, image prompts, masks, directional edits, batches and recipes
are the loop's. `python -m pipelines.clip_guided_diffusion --method noise` runs the same pipeline.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, ClassVar, Sequence

from pipelines.parsers import DEFAULT_MODEL, latent_parser, noise_model_arguments

if __name__ == "__main__":  # parse first: --help and usage errors answer before the heavy imports below
    latent_parser("pipelines.noise_optimization", "NoiseOptimizationPipeline", noise_model_arguments).parse_args()

import torch

from generators.diffusion import (BUILTIN_DIFFUSION_MODELS, DiffusionModel, NoiseGenerator, known_diffusion_names,
                                  load_diffusion)
from guidance.clip_models import CLIPEncoder, load_clip_ensemble
from guidance.prompts import parse_prompts
from guidance.runtime import pick_device
from pipelines.common import run_cli
from pipelines.latent_optimization import (DEFAULT_CLIP, LatentOptimizationPipeline, run_cli_main,
                                           with_call_settings)
from pipelines.registry import PipelineSpec


class NoiseOptimizationPipeline(LatentOptimizationPipeline):
    """Noise optimisation (ReNO): the latent loop over a diffusion model's starting noise, with ReNO's SGD with
    Nesterov momentum at lr 5, gradient norms clipped at 0.1 and the best image kept, starting from the best of 32
    random noises, with the 'geometric' augmentations.

    Measured on the meaning benchmark (32 prompts, seed 0, docs/shapes_models.md): the best of 32 starts raised the
    colour hit from 40.6% to 68.8%, and with it 'geometric' beat the 'default' set's colour jitter (65.6% to 53.1%).
    """

    name = "noise_optimization"
    model_key = "model"
    default_size = None  # the model's native size
    default_lr = 5.0
    call_settings: ClassVar[dict[str, Any]] = {"steps": 50, "optimizer": "nesterov", "grad_clip": 0.1,
                                               "best_step": True, "candidates": 32, "augment": "geometric"}
    __call__ = with_call_settings(LatentOptimizationPipeline.__call__, call_settings)

    def __init__(self, model: DiffusionModel, clip_models: Sequence[tuple[CLIPEncoder, float]],
                 sampler_steps: int | None = None, cfg_scale: float | None = None):
        if cfg_scale is None and model.text_conditioned:
            cfg_scale = model.default_cfg_scale
        super().__init__(NoiseGenerator(model, sampler_steps, cfg_scale=cfg_scale), clip_models, str(model.name))
        self.model, self.sampler_steps, self.cfg_scale = model, sampler_steps, cfg_scale
        self.default_size = model.native_size

    @classmethod
    def from_pretrained(cls, model: str = DEFAULT_MODEL, clip_models: Sequence[str] = (DEFAULT_CLIP,),
                        device: str | torch.device | None = None, sampler_steps: int | None = None,
                        cfg_scale: float | None = None) -> "NoiseOptimizationPipeline":
        """Load the diffusion model (hub id, folder or built-in name) and CLIP models (`NAME[:PRETRAINED][:WEIGHT]`)."""
        device = pick_device(device) if not isinstance(device, torch.device) else device
        members = load_clip_ensemble(clip_models, device)
        return cls(load_diffusion(model, device), members, sampler_steps, cfg_scale)

    @classmethod
    def add_model_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """The diffusion model and its short sampler."""
        noise_model_arguments(parser)

    @classmethod
    def from_arguments(cls, args: argparse.Namespace, clip_models: Sequence[str]) -> "NoiseOptimizationPipeline":
        """The pipeline the parsed CLI options ask for."""
        return cls.from_pretrained(args.model, clip_models, args.device, args.sampler_steps, args.cfg_scale)

    def prepare(self, prompt: str) -> None:
        """A text-conditioned model follows the prompt: its positive texts, and its negative ones as the negative."""
        if not self.model.text_conditioned:
            return
        prompts = parse_prompts(prompt) if prompt and prompt.strip() else []
        positive = ", ".join(p.text for p in prompts if p.weight > 0)
        negative = ", ".join(p.text for p in prompts if p.weight < 0)
        self.generator = NoiseGenerator(self.model, self.sampler_steps, positive, negative,
                                        self.cfg_scale).eval().requires_grad_(False)

    def generator_recipe(self) -> dict[str, Any]:
        """The short sampler's steps, and the classifier-free guidance of a text-conditioned model."""
        return {"sampler_steps": len(self.generator.timesteps), "cfg_scale": self.cfg_scale}


def main(argv: list[str]) -> int:
    """Run the CLI; returns the exit code."""
    return run_cli_main(NoiseOptimizationPipeline, "pipelines.noise_optimization", argv)


SPEC = PipelineSpec(name=NoiseOptimizationPipeline.name, title="Noise optimisation (diffusion)",
                    module="pipelines.noise_optimization",
                    load=lambda model, clip_models, device, **options: NoiseOptimizationPipeline.from_pretrained(
                        model, clip_models, device, **options),
                    model_label="Diffusion model", model_flag="--model", model_choices=known_diffusion_names,
                    offline_models=tuple(BUILTIN_DIFFUSION_MODELS), load_options=("sampler_steps", "cfg_scale"))


if __name__ == "__main__":
    sys.exit(run_cli(main))
