"""DiffusionCLIP fine-tuning: tune a guided-diffusion pipeline's UNet for one edit of photos, so that the tuned model
applies the edit to any photo without CLIP.

Python:  tuned = finetune(pipe, "a photo of a dog", init_image="cat.png", source_text="a photo of a cat")
         tuned.pipeline.save_model("dog-model"); tuned.pipeline(init_image="other-cat.png").images[0]
CLI:     python -m pipelines.clip_guided_diffusion "a photo of a dog" --source-text "a photo of a cat"
             --init-image cat.png --finetune-steps 40 --save-model dog-model
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from generators.diffusion import final_alpha, finetune_unet, spaced_timesteps
from guidance.clip_loss import DirectionalCLIPLoss
from guidance.errors import InvalidInputError
from guidance.runtime import autocast, check_precision, explain_out_of_memory
from guidance.validation import MAX_STEPS, check_count, check_number
from pipelines.clip_guided_diffusion import DEFAULT_EDIT_STRENGTH, CLIPGuidedDiffusionPipeline, Size, image_names
from pipelines.common import InitImages, clean_recipe


@dataclass
class FinetuneOutput:
    """The result of fine-tuning: a pipeline on the tuned model (inverting with the original), its loss history."""

    pipeline: CLIPGuidedDiffusionPipeline
    history: list[dict[str, float]]
    recipe: dict[str, Any] = field(default_factory=dict)
    interrupted: bool = False


def finetune(pipeline: CLIPGuidedDiffusionPipeline, prompt: str, *, init_image: InitImages, source_text: str,
             finetune_steps: int = 40, lr: float = 4e-6, ddim_steps: int = 6, steps: int = 100,
             edit_strength: float = DEFAULT_EDIT_STRENGTH, inversion_steps: int | None = None,
             inversion_refine: int = 0, init_weight: float | None = None, size: Size | None = None,
             seed: int | None = None, precision: str = "fp32", progress: bool = True) -> FinetuneOutput:
    """DiffusionCLIP fine-tuning: tune the UNet so that regenerating the inverted photos moves them along the
    CLIP direction from `source_text` to `prompt`; returns a pipeline on the tuned model.

    The photos are inverted once (DDIM, `steps` / `edit_strength` settle the start step); each of the
    `finetune_steps` Adam steps regenerates them through `ddim_steps` DDIM steps with gradients.
    """
    # 1. Check inputs, then seed the run.
    check_precision(precision, pipeline.device)
    _check_settings(finetune_steps, lr, ddim_steps, init_image, source_text)
    plan = pipeline.plan(prompt, steps=steps, edit_strength=edit_strength, clip_scale=0.0, init_image=init_image,
                         init_weight=init_weight, source_text=source_text, inversion_steps=inversion_steps,
                         inversion_refine=inversion_refine)
    if not pipeline.clip_models:
        raise InvalidInputError("fine-tuning needs a CLIP model; pass --clip-model (from_pretrained(clip_models=...))")
    seed, (width, height), init, _ = pipeline.prepare_run(seed, size, init_image)

    # 2. Prepare latents: the photos inverted once, up to the edit's first timestep.
    sampler, timesteps = pipeline.schedule(plan)
    loss = DirectionalCLIPLoss(pipeline.clip_models, init, plan.source_text, plan.target, l1_weight=plan.fidelity)
    history: list[torch.Tensor] = []
    bar = tqdm(range(1, finetune_steps + 1), desc="finetune", disable=not progress, dynamic_ncols=True)
    started = time.perf_counter()
    with explain_out_of_memory(f"fine-tuning at {width}x{height} through {ddim_steps} DDIM steps",
                               f"try --finetune-ddim-steps {max(1, ddim_steps // 2)}, a smaller --size, fewer "
                               "--init-image or --precision bf16"):
        with torch.no_grad(), autocast(pipeline.device, precision):
            latents = pipeline.invert(pipeline.model.from_image(init), plan, sampler, timesteps)

        # 3. Tune the UNet: each step regenerates the photos through a few DDIM steps and descends the loss.
        with autocast(pipeline.device, precision):
            tuned, interrupted = finetune_unet(
                pipeline.model, latents, spaced_timesteps(timesteps[0], timesteps[-1], ddim_steps),
                final_alpha(sampler), pipeline.model.condition(plan.target), loss, bar, lr,
                callback=lambda step, value: history.append(value))

    # 4. Record the edit in the tuned model, so that it applies it by itself.
    losses = torch.stack(history).tolist() if history else []
    original = pipeline.model.info.get("finetuned_from", pipeline.model.name)
    tuned.name = f"{original} (fine-tuned)"
    tuned.info = {"finetuned_from": original,
                  "source_text": plan.source_text, "target_text": plan.target, "edit_strength": len(timesteps) / steps,
                  "finetune_steps": len(losses), "lr": lr, "ddim_steps": ddim_steps, "seed": seed}
    recipe = clean_recipe({**tuned.info, "pipeline": "clip_guided_diffusion finetune", "size": f"{width}x{height}",
                           "steps": steps, "init_image": image_names(init_image), "init_weight": plan.fidelity,
                           "clip_models": pipeline.clip_names, "precision": precision,
                           "interrupted": interrupted, "seconds": round(time.perf_counter() - started, 2)})
    tuned_pipeline = type(pipeline)(tuned, pipeline.clip_models, pipeline.inversion_model)
    return FinetuneOutput(tuned_pipeline, [{"step": i + 1, "loss": v} for i, v in enumerate(losses)], recipe,
                          interrupted)


def _check_settings(finetune_steps: int, lr: float, ddim_steps: int, init_image: Any, source_text: str | None) -> None:
    """Validate the fine-tuning settings before any work."""
    check_count("--finetune-steps", finetune_steps, 1, MAX_STEPS)
    check_count("--finetune-ddim-steps", ddim_steps, 1, MAX_STEPS)
    check_number("--finetune-lr", lr, above=0)
    if init_image is None or not source_text:
        raise InvalidInputError("fine-tuning learns an edit of photos: give --init-image, --source-text and the "
                                "target as the prompt")
