"""CLIP-guided diffusion: steer a diffusers model's sampling towards a prompt with CLIP, or edit a photo with it.

Python:  CLIPGuidedDiffusionPipeline.from_pretrained("google/ddpm-celebahq-256")("a smiling woman").images[0]
CLI:     python -m pipelines.clip_guided_diffusion "a smiling woman" --model google/ddpm-celebahq-256 -o out.png

Editing: `init_image` starts from the photo noised to a middle step (`skip_steps` / `edit_strength`);
`init_image` + `mask` changes only the white part of the mask (Blended Diffusion); `init_image` + `source_text`
inverts the photo with DDIM and regenerates it along the CLIP direction from the source text to the prompt
(DiffusionCLIP), and `finetune(...)` tunes the UNet for such an edit so it can be applied to any photo.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from generators.diffusion import (SCHEDULERS, DiffusionModel, ddim_invert, final_alpha, finetune_unet, guided_eps,
                                  load_diffusion, make_scheduler, previous_timestep, save_diffusion, scheduler_step,
                                  spaced_timesteps)
from guidance.clip_loss import CLIPLoss, DirectionalCLIPLoss
from guidance.clip_models import CLIPEncoder, load_clip_ensemble
from guidance.cutouts import AUGMENT_PRESETS, MakeCutouts
from guidance.errors import InvalidInputError, ModelUnavailableError
from guidance.images import png_output_path, save_png, tensor_to_pil
from guidance.losses import range_loss, tv_loss
from guidance.prompts import Prompt, parse_prompt, parse_prompts
from guidance.runtime import autocast, check_precision, explain_out_of_memory, pick_device, prepare_device, resolve_seed
from pipelines.common import (InitImages, StepCallback, add_runtime_arguments, as_mask, clean_recipe, command_line, frame_of,
                              load_init_images, parse_size, round_size, run_cli, write_video)

DEFAULT_MODEL = "google/ddpm-celebahq-256"
DEFAULT_CLIP = "ViT-B-32:openai"
DEFAULT_CLIP_SCALE = 1000.0  # Disco Diffusion's order of magnitude: clip 1000, tv 150, range 50
DEFAULT_CFG_SCALE = 7.5
DEFAULT_EDIT_STRENGTH = 0.5  # DiffusionCLIP's t0 of about 500 of 1000 steps; also the default share redone from an init



@dataclass
class CLIPGuidedDiffusionOutput:
    """The result of a run: final images (one per init image), the guidance history, progress frames, the recipe."""

    images: list[Image.Image]
    history: list[dict[str, float]]
    frames: list[np.ndarray] = field(default_factory=list)
    recipe: dict[str, Any] = field(default_factory=dict)
    interrupted: bool = False


@dataclass
class FinetuneOutput:
    """The result of fine-tuning: a pipeline on the tuned model (inverting with the original), its loss history."""

    pipeline: "CLIPGuidedDiffusionPipeline"
    history: list[dict[str, float]]
    recipe: dict[str, Any] = field(default_factory=dict)
    interrupted: bool = False


@dataclass
class Plan:
    """What a call will do, settled from its settings before any model work."""

    mode: str  # 'generate', 'init' (noised init image), 'blend' (masked edit) or 'invert' (DiffusionCLIP)
    prompts: list[Prompt]
    target: str | None
    source_text: str | None
    skip: int
    clip_scale: float
    fidelity: float
    cfg_scale: float


class GuidanceLoss:
    """The loss guidance descends, of the images the model's current estimate decodes to ([0, 1] BCHW).

    `clip_scale` times the CLIP loss (of the masked composite in masked edits), plus tv and range penalties on
    [-1, 1] pixels as in Disco Diffusion, plus `fidelity` times the mean squared distance to the init image.
    Each image's loss is summed, so an image's guidance does not depend on the batch size.
    """

    def __init__(self, clip_loss: torch.nn.Module, clip_scale: float, tv_scale: float, range_scale: float,
                 fidelity: float, init: torch.Tensor | None, mask: torch.Tensor | None):
        self.clip_loss, self.clip_scale, self.tv_scale, self.range_scale = clip_loss, clip_scale, tv_scale, range_scale
        self.fidelity, self.init, self.mask = fidelity, init, mask

    @property
    def last_losses(self) -> dict[str, torch.Tensor]:
        """The CLIP loss's latest per-prompt values, detached."""
        return self.clip_loss.last_losses

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """The scalar loss of a batch of images."""
        seen = images if self.mask is None else images * self.mask + self.init * (1 - self.mask)
        total = self.clip_scale * self.clip_loss(seen, reduction="sum")
        pixels = images * 2 - 1
        if self.tv_scale:
            total = total + self.tv_scale * tv_loss(pixels).sum()
        if self.range_scale:
            total = total + self.range_scale * range_loss(pixels, -1.0, 1.0).sum()
        if self.fidelity:
            total = total + self.fidelity * (images - self.init).square().mean(dim=(1, 2, 3)).sum()
        return total


class CLIPGuidedDiffusionPipeline:
    """A diffusion model and a CLIP ensemble, loaded once; each call samples (or edits) under CLIP guidance.

    `inversion_model` is the model DDIM inversion runs on: the model itself, or for a fine-tuned model the
    original it was tuned from (DiffusionCLIP inverts with the original and generates with the tuned UNet).
    """

    def __init__(self, model: DiffusionModel, clip_models: Sequence[tuple[CLIPEncoder, float]] = (),
                 inversion_model: DiffusionModel | None = None):
        self.model = model
        self.clip_models = list(clip_models)
        self.inversion_model = inversion_model or model
        self.device = model.device

    @classmethod
    def from_pretrained(cls, model: str | Path = DEFAULT_MODEL, clip_models: Sequence[str] | None = None,
                        device: str | torch.device | None = None) -> "CLIPGuidedDiffusionPipeline":
        """Load the diffusion model (hub id, folder or built-in name) and CLIP models (`NAME[:PRETRAINED][:WEIGHT]`).

        `clip_models=None` means ViT-B-32:openai, or none for a fine-tuned model (its edits need no CLIP).
        """
        device = pick_device(device) if not isinstance(device, torch.device) else device
        diffusion = load_diffusion(model, device)
        inversion = None
        if diffusion.finetuned:
            original = diffusion.info["finetuned_from"]
            try:
                inversion = diffusion.with_unet(load_diffusion(original, device).unet)
            except ModelUnavailableError as error:
                raise ModelUnavailableError(f"{model} was fine-tuned from {original}, which DDIM inversion needs: {error}") from None
        if clip_models is None:
            clip_models = [] if diffusion.finetuned else [DEFAULT_CLIP]
        members = load_clip_ensemble(clip_models, device) if clip_models else []
        return cls(diffusion, members, inversion)

    def save_model(self, folder: str | Path) -> Path:
        """Save the diffusion model (e.g. after `finetune`) as a diffusers folder loadable by `from_pretrained`."""
        return save_diffusion(self.model, folder)

    def __call__(self, prompt: str = "", *, size: str | int | tuple[int, int] | None = None, steps: int = 100,
                 seed: int | None = None, scheduler: str = "ddim", eta: float = 0.0, skip_steps: int | None = None,
                 edit_strength: float | None = None, clip_scale: float | None = None, tv_scale: float = 150.0,
                 range_scale: float = 50.0, clamp_grad: float = 0.05, guide_from: float = 0.0, guide_until: float = 1.0,
                 guide_every: int = 1, cfg_scale: float | None = None, cutn: int = 32, cut_pow: float = 0.5,
                 augment: str = "default", init_image: InitImages | None = None, init_weight: float | None = None,
                 mask: str | Path | torch.Tensor | None = None, source_text: str | None = None,
                 inversion_steps: int | None = None, inversion_refine: int = 0, precision: str = "fp32",
                 save_every: int = 50, callback: StepCallback | None = None,
                 progress: bool = True) -> CLIPGuidedDiffusionOutput:
        """Generate (or edit) images; returns them with the history. Ctrl-C ends early and keeps the last estimate."""
        check_precision(precision, self.device)
        if self.model.finetuned and init_image is not None and mask is None:  # apply the edit it was tuned for
            if not prompt and not source_text:
                prompt, source_text = self.model.info["target_text"], self.model.info["source_text"]
            if source_text and skip_steps is None and edit_strength is None:
                edit_strength = self.model.info["edit_strength"]
        plan = self._plan(prompt, steps, scheduler, eta, skip_steps, edit_strength, clip_scale, init_image, init_weight,
                          mask, source_text, inversion_steps, inversion_refine, cfg_scale)
        self._check_guidance(tv_scale, range_scale, clamp_grad, guide_from, guide_until, guide_every)
        cutouts = MakeCutouts(max((m.image_size for m, _ in self.clip_models), default=224), cutn=cutn, cut_pow=cut_pow,
                              augment=augment)
        seed = resolve_seed(seed)
        prepare_device(self.device)
        width, height = self._size(size)
        torch.manual_seed(seed)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        init = load_init_images(init_image, (width, height), self.device)
        mask_tensor = as_mask(mask, (width, height), self.device)
        sampler = make_scheduler(scheduler, self.model.scheduler_config, steps, invertible=plan.mode == "invert")
        timesteps = [int(t) for t in sampler.timesteps[plan.skip:]]
        recipe = clean_recipe({
            "pipeline": "clip_guided_diffusion", "prompt": prompt, "model": self.model.name, "size": f"{width}x{height}",
            "steps": steps, "skip_steps": plan.skip, "scheduler": scheduler, "eta": eta, "seed": seed,
            "clip_scale": plan.clip_scale, "tv_scale": tv_scale, "range_scale": range_scale, "clamp_grad": clamp_grad,
            "guide_from": guide_from, "guide_until": guide_until, "guide_every": guide_every,
            "cfg_scale": plan.cfg_scale if self.model.text_conditioned and plan.mode != "invert" else None,
            "cutn": cutn, "cut_pow": cut_pow, "augment": cutouts.augment,
            "clip_models": [f"{m.name}:{w:g}" for m, w in self.clip_models] if plan.clip_scale else None,
            "init_image": _image_names(init_image), "init_weight": plan.fidelity if init is not None else None,
            "mask": str(mask) if isinstance(mask, (str, Path)) else None, "source_text": plan.source_text,
            "inversion_steps": (inversion_steps or len(timesteps)) if plan.mode == "invert" else None,
            "inversion_refine": inversion_refine if plan.mode == "invert" else None,
            "finetuned_from": self.model.info.get("finetuned_from"), "precision": precision, "device": str(self.device),
        })
        what = f"CLIP-guided diffusion at {width}x{height} with {cutn} cutouts"
        factor = self.model.size_factor
        smaller = f"{width * 3 // 4 // factor * factor}x{height * 3 // 4 // factor * factor}"
        started = time.perf_counter()
        with explain_out_of_memory(what, f"try --size {smaller}, --cutn {max(1, cutn // 2)}, --guide-every 2 "
                                         "or --precision bf16"):
            with torch.no_grad(), autocast(self.device, precision):
                x_init = self.model.from_image(init) if init is not None else None
                x, gen_condition = self._start(plan, timesteps, sampler, init, x_init, generator, (width, height),
                                               inversion_steps, inversion_refine)
            loss_fn = self._loss_fn(plan, init, mask_tensor, cutouts, tv_scale, range_scale)
            guided = _guided_steps(len(timesteps), guide_from, guide_until, guide_every) if loss_fn else set()
            final, history, steps_done, frames, interrupted = self._denoise(
                x, x_init, timesteps, sampler, gen_condition, loss_fn, guided, eta, clamp_grad, mask_tensor, init,
                generator, precision, save_every, callback, progress)
        recipe.update(steps_done=steps_done, interrupted=interrupted,
                      seconds=round(time.perf_counter() - started, 2))
        images = [tensor_to_pil(final[i:i + 1]) for i in range(final.shape[0])]
        return CLIPGuidedDiffusionOutput(images, history, frames + [frame_of(final)], recipe, interrupted)

    def finetune(self, prompt: str, *, init_image: InitImages, source_text: str, finetune_steps: int = 40,
                 lr: float = 4e-6, ddim_steps: int = 6, steps: int = 100, edit_strength: float = DEFAULT_EDIT_STRENGTH,
                 inversion_steps: int | None = None, inversion_refine: int = 0, init_weight: float | None = None,
                 size: str | int | tuple[int, int] | None = None, seed: int | None = None, precision: str = "fp32",
                 progress: bool = True) -> FinetuneOutput:
        """DiffusionCLIP fine-tuning: tune the UNet so that regenerating the inverted photos moves them along the
        CLIP direction from `source_text` to `prompt`; returns a pipeline on the tuned model.

        The photos are inverted once (DDIM, `steps` / `edit_strength` settle the start step); each of the
        `finetune_steps` Adam steps regenerates them through `ddim_steps` DDIM steps with gradients.
        """
        check_precision(precision, self.device)
        if finetune_steps < 1 or ddim_steps < 1:
            raise InvalidInputError(f"fine-tuning needs at least 1 step and 1 DDIM step, got {finetune_steps} and {ddim_steps}")
        if not lr > 0:
            raise InvalidInputError(f"learning rate must be positive, got {lr}")
        if init_image is None or not source_text:
            raise InvalidInputError("fine-tuning learns an edit of photos: give --init-image, --source-text and the "
                                    "target as the prompt")
        plan = self._plan(prompt, steps, "ddim", 0.0, None, edit_strength, 0.0, init_image, init_weight, None,
                          source_text, inversion_steps, inversion_refine, None)
        if not self.clip_models:
            raise InvalidInputError("fine-tuning needs a CLIP model; pass --clip-model (from_pretrained(clip_models=...))")
        seed = resolve_seed(seed)
        prepare_device(self.device)
        width, height = self._size(size)
        torch.manual_seed(seed)
        init = load_init_images(init_image, (width, height), self.device)
        sampler = make_scheduler("ddim", self.model.scheduler_config, steps, invertible=True)
        timesteps = [int(t) for t in sampler.timesteps[plan.skip:]]
        inverse = self._inversion_timesteps(timesteps, inversion_steps)
        loss = DirectionalCLIPLoss(self.clip_models, init, plan.source_text, plan.target, l1_weight=plan.fidelity)
        history: list[torch.Tensor] = []
        bar = tqdm(range(1, finetune_steps + 1), desc="finetune", disable=not progress, dynamic_ncols=True)
        started = time.perf_counter()
        with explain_out_of_memory(f"fine-tuning at {width}x{height} through {ddim_steps} DDIM steps",
                                   f"try --finetune-ddim-steps {max(1, ddim_steps // 2)}, a smaller --size, fewer "
                                   "--init-image or --precision bf16"):
            with torch.no_grad(), autocast(self.device, precision):
                latents = ddim_invert(self.inversion_model, self.model.from_image(init), inverse,
                                      self.model.condition(plan.source_text), final_alpha(sampler), inversion_refine)
            with autocast(self.device, precision):
                tuned, interrupted = finetune_unet(
                    self.model, latents, spaced_timesteps(timesteps[0], timesteps[-1], ddim_steps),
                    final_alpha(sampler), self.model.condition(plan.target), loss, bar, lr,
                    callback=lambda step, value: history.append(value))
        losses = torch.stack(history).tolist() if history else []
        original = self.model.info.get("finetuned_from", self.model.name)
        tuned.name = f"{original} (fine-tuned)"
        tuned.info = {"finetuned_from": original,
                      "source_text": plan.source_text, "target_text": plan.target, "edit_strength": len(timesteps) / steps,
                      "finetune_steps": len(losses), "lr": lr, "ddim_steps": ddim_steps, "seed": seed}
        recipe = clean_recipe({**tuned.info, "pipeline": "clip_guided_diffusion finetune", "size": f"{width}x{height}",
                               "steps": steps, "init_image": _image_names(init_image), "init_weight": plan.fidelity,
                               "clip_models": [f"{m.name}:{w:g}" for m, w in self.clip_models], "precision": precision,
                               "interrupted": interrupted, "seconds": round(time.perf_counter() - started, 2)})
        pipeline = CLIPGuidedDiffusionPipeline(tuned, self.clip_models, self.inversion_model)
        return FinetuneOutput(pipeline, [{"step": i + 1, "loss": v} for i, v in enumerate(losses)], recipe, interrupted)

    # --- settings ---------------------------------------------------------------------------------------------

    def _plan(self, prompt: str, steps: int, scheduler: str, eta: float, skip_steps: int | None,
              edit_strength: float | None, clip_scale: float | None, init_image: Any, init_weight: float | None,
              mask: Any, source_text: str | None, inversion_steps: int | None, inversion_refine: int,
              cfg_scale: float | None) -> Plan:
        """Validate the settings that shape the run, before any work, and settle its mode and defaults."""
        if not 1 <= steps <= self.model.num_train_timesteps:
            raise InvalidInputError(f"steps must be between 1 and {self.model.num_train_timesteps}, got {steps}")
        if scheduler not in SCHEDULERS:
            raise InvalidInputError(f"unknown scheduler {scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
        if not (math.isfinite(eta) and eta >= 0) or (eta and scheduler != "ddim"):
            raise InvalidInputError(f"eta must be a non-negative number and applies to --scheduler ddim, got {eta}")
        if (mask is not None or source_text) and init_image is None:
            raise InvalidInputError("--mask and --source-text edit an image; give it with --init-image")
        if mask is not None and source_text:
            raise InvalidInputError("choose one way to edit: --mask (change a region) or --source-text (directional)")
        mode = "generate" if init_image is None else "blend" if mask is not None else "invert" if source_text else "init"
        skip = self._skip(steps, skip_steps, edit_strength, mode)
        if mode == "invert" and (scheduler != "ddim" or eta):
            raise InvalidInputError("a --source-text edit inverts the image with deterministic DDIM; "
                                    "use --scheduler ddim with --eta 0")
        if inversion_steps is not None and (mode != "invert" or inversion_steps < 1):
            raise InvalidInputError("--inversion-steps (at least 1) applies to --source-text edits")
        if inversion_refine and (mode != "invert" or inversion_refine < 0):
            raise InvalidInputError("--inversion-refine (0 or more) applies to --source-text edits")
        conditional = self.model.text_conditioned
        if cfg_scale is not None and (not conditional or mode == "invert" or not math.isfinite(cfg_scale)):
            raise InvalidInputError(f"--cfg-scale applies to text-conditioned models outside --source-text edits; "
                                    f"{self.model.name} {'is unconditional' if not conditional else 'cannot use it here'}")
        finetuned_edit = self.model.finetuned and mode == "invert"
        scale = clip_scale if clip_scale is not None else (0.0 if finetuned_edit else DEFAULT_CLIP_SCALE)
        if not (math.isfinite(scale) and scale >= 0):
            raise InvalidInputError(f"--clip-scale must be a non-negative number, got {scale}")
        if scale and not self.clip_models:
            raise InvalidInputError("this run is CLIP-guided but no CLIP model is loaded; pass --clip-model "
                                    f"{DEFAULT_CLIP} (from_pretrained(clip_models=[...])) or --clip-scale 0")
        if init_weight is not None and not (math.isfinite(init_weight) and init_weight >= 0):
            raise InvalidInputError(f"--init-weight must be a non-negative number, got {init_weight}")
        fidelity = init_weight if init_weight is not None else (1.0 if mode == "invert" else 0.0)
        if mode == "invert":
            target = parse_prompt(prompt).text if prompt and prompt.strip() else ""
            if not target or "|" in prompt:
                raise InvalidInputError("a directional edit needs exactly one target text, e.g. 'a photo of a dog'")
            return Plan(mode, [], target, source_text.strip(), skip, scale, fidelity, 1.0)
        return Plan(mode, parse_prompts(prompt), None, None, skip, scale, fidelity,
                    cfg_scale if cfg_scale is not None else DEFAULT_CFG_SCALE)

    @staticmethod
    def _skip(steps: int, skip_steps: int | None, edit_strength: float | None, mode: str) -> int:
        """How many of the `steps` scheduler steps to skip: 0 from noise, `steps * (1 - strength)` from an image."""
        if skip_steps is not None and edit_strength is not None:
            raise InvalidInputError("give --skip-steps or --edit-strength, not both")
        if mode == "generate" and (skip_steps or edit_strength is not None):
            raise InvalidInputError("--skip-steps and --edit-strength start from an image; give it with --init-image")
        if skip_steps is not None:
            if not 0 <= skip_steps < steps:
                raise InvalidInputError(f"--skip-steps must be between 0 and steps - 1 ({steps - 1}), got {skip_steps}")
            return skip_steps
        strength = DEFAULT_EDIT_STRENGTH if edit_strength is None else edit_strength
        if not 0 < strength <= 1:
            raise InvalidInputError(f"--edit-strength must be in (0, 1], got {strength}")
        return 0 if mode == "generate" else min(steps - max(1, round(steps * strength)), steps - 1)

    @staticmethod
    def _check_guidance(tv_scale: float, range_scale: float, clamp_grad: float, guide_from: float, guide_until: float,
                        guide_every: int) -> None:
        """Validate the guidance settings (MakeCutouts checks its own)."""
        for label, value in (("--tv-scale", tv_scale), ("--range-scale", range_scale), ("--clamp-grad", clamp_grad)):
            if not (math.isfinite(value) and value >= 0):
                raise InvalidInputError(f"{label} must be a non-negative number, got {value}")
        if not 0 <= guide_from < guide_until <= 1:
            raise InvalidInputError(f"guide only a part of the steps with 0 <= --guide-from < --guide-until <= 1, "
                                    f"got {guide_from} and {guide_until}")
        if guide_every < 1:
            raise InvalidInputError(f"--guide-every must be at least 1, got {guide_every}")

    # --- inputs -----------------------------------------------------------------------------------------------

    def _size(self, size: str | int | tuple[int, int] | None) -> tuple[int, int]:
        """The output (width, height): the given size or the model's native one, rounded down to its size factor."""
        return round_size(parse_size(self.model.native_size if size is None else size), self.model.size_factor,
                          self.model.name)

    # --- the run ----------------------------------------------------------------------------------------------

    @staticmethod
    def _inversion_timesteps(timesteps: list[int], inversion_steps: int | None) -> list[int]:
        """Ascending timesteps to invert along: the run's own in reverse (an exact mirror), or `inversion_steps`
        evenly spaced ones ending at the run's first timestep."""
        if inversion_steps is None:
            return timesteps[::-1]
        return spaced_timesteps(timesteps[-1], timesteps[0], inversion_steps)

    def _start(self, plan: Plan, timesteps: list[int], sampler: Any, init: torch.Tensor | None,
               x_init: torch.Tensor | None, generator: torch.Generator, size: tuple[int, int],
               inversion_steps: int | None, inversion_refine: int) -> tuple[torch.Tensor, Any]:
        """The first sample of the run and the UNet's condition while generating."""
        if plan.mode == "invert":
            condition = self.model.condition(plan.source_text)
            x = ddim_invert(self.inversion_model, x_init, self._inversion_timesteps(timesteps, inversion_steps),
                            condition, final_alpha(sampler), inversion_refine)
            return x, self.model.condition(plan.target)
        positive = ", ".join(p.text for p in plan.prompts if p.weight > 0)
        negative = ", ".join(p.text for p in plan.prompts if p.weight < 0)
        condition = self.model.condition(positive, negative, plan.cfg_scale)
        batch = 1 if init is None else init.shape[0]
        noise = torch.randn((batch, *self.model.sample_shape(*size)), generator=generator, device=self.device)
        if x_init is None:
            return noise, condition
        return self.model.add_noise(x_init, noise, timesteps[0]), condition

    def _loss_fn(self, plan: Plan, init: torch.Tensor | None, mask: torch.Tensor | None, cutouts: MakeCutouts,
                 tv_scale: float, range_scale: float) -> "GuidanceLoss | None":
        """The loss guidance descends, or None when guidance is off (`clip_scale` 0)."""
        if not plan.clip_scale:
            return None
        if plan.mode == "invert":
            clip_loss: torch.nn.Module = DirectionalCLIPLoss(self.clip_models, init, plan.source_text, plan.target,
                                                             cutouts=cutouts, l1_weight=plan.fidelity)
        else:
            clip_loss = CLIPLoss(self.clip_models, plan.prompts, cutouts=cutouts)
        fidelity = plan.fidelity if plan.mode in ("init", "blend") else 0.0
        return GuidanceLoss(clip_loss, plan.clip_scale, tv_scale, range_scale, fidelity, init, mask)

    def _denoise(self, x: torch.Tensor, x_init: torch.Tensor | None, timesteps: list[int], sampler: Any, condition: Any,
                 loss_fn: GuidanceLoss | None, guided: set[int], eta: float, clamp_grad: float, mask: torch.Tensor | None,
                 init: torch.Tensor | None, generator: torch.Generator, precision: str, save_every: int,
                 callback: StepCallback | None,
                 progress: bool) -> tuple[torch.Tensor, list[dict[str, float]], int, list[np.ndarray], bool]:
        """Run the scheduler over `timesteps`, guiding the chosen steps; returns the final images in [0, 1]
        (masked edits composited onto the init), the guidance history, the steps done, progress frames and
        whether Ctrl-C stopped it."""
        latent_mask = F.adaptive_max_pool2d(mask, x.shape[-2:]) if mask is not None else None
        estimate = x_init if x_init is not None else x
        records: list[tuple[int, int, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]] = []
        steps_done = 0
        frames: list[np.ndarray] = []
        interrupted = False

        def render(sample: torch.Tensor) -> torch.Tensor:
            with torch.no_grad(), autocast(self.device, precision):
                images = self.model.to_image(sample).clamp(0, 1)
            return images if mask is None else images * mask + init * (1 - mask)

        bar = tqdm(timesteps, desc="diffusion", disable=not progress, dynamic_ncols=True)
        try:
            for index, t in enumerate(bar):
                with autocast(self.device, precision):
                    if index in guided:
                        eps, loss, finite = guided_eps(self.model, x, t, condition, loss_fn, clamp_grad)
                        records.append((index + 1, t, loss, finite, loss_fn.last_losses))
                    else:
                        with torch.no_grad():
                            eps = self.model.predict_eps(x, t, condition)
                x, estimate = scheduler_step(sampler, eps, t, x, eta, generator)
                if latent_mask is not None:
                    following = previous_timestep(timesteps, index)
                    known = x_init if following is None else self.model.add_noise(
                        x_init, torch.randn(x.shape, generator=generator, device=self.device), following)
                    x = x * latent_mask + known * (1 - latent_mask)
                steps_done = step = index + 1
                if save_every and (step % save_every == 0 or step == len(timesteps)):
                    preview = render(estimate)
                    frames.append(frame_of(preview))
                    if records:
                        bar.set_postfix(loss=f"{records[-1][2].item():.4g}")
                    if callback is not None and callback(step, preview):
                        break
        except KeyboardInterrupt:
            interrupted = True
        final = render(x if steps_done == len(timesteps) else estimate)
        losses = torch.stack([r[2] for r in records]).tolist() if records else []
        finite = torch.stack([r[3] for r in records]).tolist() if records else []
        guided_history = [{"step": step, "timestep": t, "loss": loss, "skipped": float(not ok),
                           **{key: float(value) for key, value in parts.items()}}
                          for (step, t, _, _, parts), loss, ok in zip(records, losses, finite)]
        return final, guided_history, steps_done, frames, interrupted


def _guided_steps(count: int, guide_from: float, guide_until: float, guide_every: int) -> set[int]:
    """Indices of the steps that get CLIP guidance: every `guide_every`-th one inside the [from, until) fraction."""
    first = math.ceil(guide_from * count)
    return {index for index in range(first, count) if index < guide_until * count and (index - first) % guide_every == 0}


def _image_names(init_image: Any) -> list[str] | None:
    """The file names of the init images, for the recipe."""
    if init_image is None or isinstance(init_image, torch.Tensor):
        return None
    return [str(p) for p in ([init_image] if isinstance(init_image, (str, Path)) else init_image)]


def output_paths(output: Path, count: int) -> list[Path]:
    """One PNG per edited image: the output itself for one, `NAME-1.png`, `NAME-2.png`, ... for several."""
    if count == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{i}{output.suffix}") for i in range(1, count + 1)]


def build_parser() -> argparse.ArgumentParser:
    """The command-line options."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.clip_guided_diffusion", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("prompt", nargs="?", default="",
                        help="text prompt; 'text:weight:stop' items joined by '|' (negative weights push away); with "
                             "--source-text, the target text; may be empty to apply a fine-tuned model's edit")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="diffusers model: hub id, local folder or built-in name")
    parser.add_argument("--size", default=None, help="WIDTH or WIDTHxHEIGHT (default: the model's native size)")
    parser.add_argument("--steps", type=int, default=100, help="scheduler steps over the whole noise schedule")
    parser.add_argument("--scheduler", choices=sorted(SCHEDULERS), default="ddim")
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM noise (0: deterministic, 1: like DDPM)")
    parser.add_argument("--skip-steps", type=int, default=None,
                        help="with --init-image: skip this many of the first steps (default: half of them)")
    parser.add_argument("--edit-strength", type=float, default=None,
                        help="with --init-image: the share of the steps redone, in (0, 1] (DiffusionCLIP's t0 / T)")
    parser.add_argument("--clip-scale", type=float, default=None,
                        help=f"CLIP guidance strength (default {DEFAULT_CLIP_SCALE:g}; 0 for a fine-tuned model's edit; "
                             "0 turns guidance off)")
    parser.add_argument("--tv-scale", type=float, default=150.0, help="smoothness (total variation) guidance")
    parser.add_argument("--range-scale", type=float, default=50.0, help="guidance keeping pixels in range")
    parser.add_argument("--clamp-grad", type=float, default=0.05,
                        help="clamp the guidance gradient's RMS to this (0: no clamp)")
    parser.add_argument("--guide-from", type=float, default=0.0, help="guide from this fraction of the steps on")
    parser.add_argument("--guide-until", type=float, default=1.0, help="guide until this fraction of the steps")
    parser.add_argument("--guide-every", type=int, default=1, help="guide every K-th step (faster)")
    parser.add_argument("--cfg-scale", type=float, default=None,
                        help=f"classifier-free guidance of text-conditioned models (default {DEFAULT_CFG_SCALE:g})")
    parser.add_argument("--cutn", type=int, default=32, help="cutouts per guided step")
    parser.add_argument("--cut-pow", type=float, default=0.5, help="cutout size power (higher: smaller cutouts)")
    parser.add_argument("--augment", choices=AUGMENT_PRESETS, default="default", help="cutout augmentation preset")
    parser.add_argument("--clip-model", action="append", default=None, metavar="NAME[:PRETRAINED][:WEIGHT]",
                        help=f"CLIP model, repeatable for an ensemble (default: {DEFAULT_CLIP})")
    parser.add_argument("--init-image", action="append", default=None,
                        help="start from this image and edit it; repeat to edit several (NAME-1.png, NAME-2.png, ...)")
    parser.add_argument("--init-weight", type=float, default=None,
                        help="fidelity to the init image (default 0; L1 weight 1 for --source-text edits)")
    parser.add_argument("--mask", default=None, help="edit only the white region of this mask (same size as the output)")
    parser.add_argument("--source-text", default=None,
                        help="describe the init image; DDIM-invert it and edit towards the prompt (DiffusionCLIP)")
    parser.add_argument("--inversion-steps", type=int, default=None,
                        help="DDIM inversion steps (default: mirror the edit's own steps)")
    parser.add_argument("--inversion-refine", type=int, default=0,
                        help="fixed-point refinements per inversion step: exacter inversion, one more UNet pass each")
    parser.add_argument("--finetune-steps", type=int, default=0,
                        help="first fine-tune the UNet for this --source-text edit for N steps (DiffusionCLIP)")
    parser.add_argument("--finetune-lr", type=float, default=4e-6, help="fine-tuning learning rate")
    parser.add_argument("--finetune-ddim-steps", type=int, default=6,
                        help="DDIM steps generated with gradients in each fine-tuning step")
    parser.add_argument("--save-model", default=None, help="save the fine-tuned model to this folder (use it as --model)")
    add_runtime_arguments(parser)
    return parser


def main(argv: list[str]) -> int:
    """Run the CLI; returns the exit code."""
    args = build_parser().parse_args(argv)
    output = png_output_path(args.output)
    if args.size is not None:
        parse_size(args.size)
    if args.save_model and not args.finetune_steps:
        raise InvalidInputError("--save-model saves a fine-tuned model; add --finetune-steps N")
    if args.finetune_steps and args.skip_steps is not None:
        raise InvalidInputError("fine-tuning sets its start step with --edit-strength, not --skip-steps")
    seed = resolve_seed(args.seed)
    pipe = CLIPGuidedDiffusionPipeline.from_pretrained(args.model, args.clip_model, args.device)
    command = command_line("pipelines.clip_guided_diffusion",
                           [*argv, *([] if args.seed is not None else ["--seed", str(seed)])])
    if args.finetune_steps:
        tuned = pipe.finetune(args.prompt, init_image=args.init_image, source_text=args.source_text,
                              finetune_steps=args.finetune_steps, lr=args.finetune_lr,
                              ddim_steps=args.finetune_ddim_steps, steps=args.steps,
                              edit_strength=DEFAULT_EDIT_STRENGTH if args.edit_strength is None else args.edit_strength,
                              inversion_steps=args.inversion_steps, inversion_refine=args.inversion_refine,
                              init_weight=args.init_weight, size=args.size,
                              seed=seed, precision=args.precision)
        if args.save_model:
            tuned.pipeline.save_model(args.save_model)
            print(f"fine-tuned model saved to {args.save_model} ({tuned.recipe['finetune_steps']} steps)", file=sys.stderr)
        if tuned.interrupted:
            print("fine-tuning interrupted; no edit made", file=sys.stderr)
            return 130
        pipe = tuned.pipeline
    paths = output_paths(output, len(args.init_image or [None]))

    def save_progress(step: int, images: torch.Tensor) -> None:
        for index, path in enumerate(paths):
            save_png(images[index:index + 1], path, {"command": command, "step": step, "partial": True})

    result = pipe(args.prompt, size=args.size, steps=args.steps, seed=seed, scheduler=args.scheduler, eta=args.eta,
                  skip_steps=args.skip_steps, edit_strength=args.edit_strength, clip_scale=args.clip_scale,
                  tv_scale=args.tv_scale, range_scale=args.range_scale, clamp_grad=args.clamp_grad,
                  guide_from=args.guide_from, guide_until=args.guide_until, guide_every=args.guide_every,
                  cfg_scale=args.cfg_scale, cutn=args.cutn, cut_pow=args.cut_pow, augment=args.augment,
                  init_image=args.init_image, init_weight=args.init_weight, mask=args.mask,
                  source_text=args.source_text, inversion_steps=args.inversion_steps,
                  inversion_refine=args.inversion_refine, precision=args.precision,
                  save_every=args.save_every, callback=save_progress)
    for index, (image, path) in enumerate(zip(result.images, paths)):
        own = {"init_image": args.init_image[index]} if args.init_image else {}
        save_png(image, path, {**result.recipe, **own, "command": command})
    if args.video:
        write_video(result.frames, args.video)
    state = "interrupted after" if result.interrupted else "done in"
    names = ", ".join(str(path) for path in paths)
    print(f"{state} {result.recipe['steps_done']} steps ({result.recipe['seconds']} s): {names}", file=sys.stderr)
    return 130 if result.interrupted else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
