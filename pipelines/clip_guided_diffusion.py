"""CLIP-guided diffusion: steer a diffusers model's sampling towards a prompt with CLIP, or edit a photo with it.

Python:  CLIPGuidedDiffusionPipeline.from_pretrained("google/ddpm-celebahq-256")("a smiling woman").images[0]
CLI:     python -m pipelines.clip_guided_diffusion "a smiling woman" --model google/ddpm-celebahq-256 -o out.png

Editing: `init_image` starts from the photo noised to a middle step (`skip_steps` / `edit_strength`);
`init_image` + `mask` changes only the white part of the mask (Blended Diffusion); `init_image` + `source_text`
inverts the photo with DDIM and regenerates it along the CLIP direction from the source text to the prompt
(DiffusionCLIP), and `finetune(...)` (pipelines.diffusionclip) tunes the UNet for such an edit so it can be
applied to any photo.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from pipelines.parsers import (DEFAULT_BACKWARD_LR, DEFAULT_CLIP_SCALE, DEFAULT_EDIT_BACKWARD_STEPS,
                               DEFAULT_MODEL, MAX_IMAGES, MAX_INVERSION_REFINE, METHODS,
                               REGION_CANDIDATES)
from pipelines.parsers import clip_guided_diffusion_parser as build_parser

if __name__ == "__main__":  # parse first: --help and usage errors answer before the heavy imports below
    build_parser().parse_args()

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from generators.diffusion import (BUILTIN_DIFFUSION_MODELS, GUIDANCE_SCHEDULES, SCHEDULERS, DiffusionModel,
                                  backward_eps, ddim_invert, final_alpha, folder_info, guidance_weight, guided_eps,
                                  inversion_timesteps, known_diffusion_names, load_diffusion, make_scheduler,
                                  previous_timestep, renoise, save_diffusion, scheduler_step)
from guidance.clip_loss import CLIPLoss, DirectionalCLIPLoss
from guidance.clip_models import CLIPEncoder, load_clip_ensemble
from guidance.cutouts import MakeCutouts
from guidance.errors import InvalidInputError, ModelUnavailableError
from guidance.images import png_output_path, tensor_to_pil
from guidance.losses import range_loss, tv_loss
from guidance.memory import check_memory, estimate_run_bytes
from guidance.outputs import check_folder
from guidance.prompts import Prompt, parse_prompts
from guidance.runtime import autocast, check_precision, explain_out_of_memory, pick_device, prepare_device, resolve_seed
from guidance.validation import MAX_STEPS, check_count, check_some_weight
from pipelines.common import (DEFAULT_CLIP, TARGET_WEIGHT, InitImages, PipelineOutput, StepCallback,
                              check_batch_outputs, check_cutouts, clean_recipe, command_line, directional_target,
                              edit_mode, finish_cli, frame_of, load_edit_inputs, parse_size, round_size, run_cli,
                              save_partial)
from pipelines.noise_optimization import NoiseOptimizationPipeline
from pipelines.ranking import ranking_for
from pipelines.registry import PipelineSpec
from pipelines.starts import best_candidates, recolourable, region_recolourings, start_region

if TYPE_CHECKING:
    from pipelines.diffusionclip import FinetuneOutput

MAX_RECURRENCE = 100  # times a guided step may be done (each one more guided UNet pass)
MAX_BACKWARD_STEPS = 1000  # backward-guidance optimiser steps per guided step
DEFAULT_EDIT_STRENGTH = 0.5  # DiffusionCLIP's t0 of about 500 of 1000 steps; also the default share redone from an init

Size = str | int | tuple[int, int]
# A guided step's record: (step, timestep, loss, whether its gradient was finite, the CLIP loss's parts).
Record = tuple[int, int, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]


@dataclass
class Plan:
    """What a call will do, settled from its settings before any model work."""

    mode: str  # edit_mode's 'generate', 'init' (noised init image), 'masked' (Blended Diffusion) or 'directional'
    prompts: list[Prompt]
    target: str | None  # the target text of a directional edit
    source_text: str | None
    steps: int
    scheduler: str
    eta: float
    skip: int  # scheduler steps skipped at the start
    clip_scale: float
    fidelity: float
    cfg_scale: float
    inversion_steps: int | None
    inversion_refine: int


def parse_range(value: str | Sequence[float], label: str = "--recurrence-range") -> tuple[float, float]:
    """A part of the steps, 'A:B' or (A, B) with 0 <= A < B <= 1, as a pair of fractions."""
    try:
        low, high = (float(v) for v in (value.split(":") if isinstance(value, str) else value))
    except (TypeError, ValueError):
        low = high = math.nan
    if not 0 <= low < high <= 1:
        raise InvalidInputError(f"{label} must be A:B, fractions of the steps with 0 <= A < B <= 1 (e.g. 0.2:0.6), "
                                f"got {value!r}")
    return low, high


@dataclass(frozen=True)
class GuidanceSettings:
    """The penalties guidance adds to the CLIP loss, the gradient clamp, which steps it guides and how strongly,
    self-recurrence (redoing a guided step) and backward guidance (optimising the clean estimate)."""

    tv_scale: float
    range_scale: float
    clamp_grad: float
    guide_from: float
    guide_until: float
    guide_every: int
    guidance_schedule: str = "constant"
    recurrence: int = 1
    recurrence_range: tuple[float, float] = (0.0, 1.0)
    backward_steps: int = 0
    backward_lr: float = DEFAULT_BACKWARD_LR

    def check(self) -> None:
        """Validate the settings (MakeCutouts checks its own)."""
        for label, value in (("--tv-scale", self.tv_scale), ("--range-scale", self.range_scale),
                             ("--clamp-grad", self.clamp_grad), ("--backward-lr", self.backward_lr)):
            if not (math.isfinite(value) and value >= 0):
                raise InvalidInputError(f"{label} must be a non-negative number, got {value}")
        if self.guidance_schedule not in GUIDANCE_SCHEDULES:
            raise InvalidInputError(f"unknown --guidance-schedule {self.guidance_schedule!r}; choose one of "
                                    f"{', '.join(GUIDANCE_SCHEDULES)}")
        check_count("--recurrence", self.recurrence, 1, MAX_RECURRENCE)
        check_count("--backward-steps", self.backward_steps, 0, MAX_BACKWARD_STEPS)
        if not 0 <= self.guide_from < self.guide_until <= 1:
            raise InvalidInputError(f"guide only a part of the steps with 0 <= --guide-from < --guide-until <= 1, "
                                    f"got {self.guide_from} and {self.guide_until}")
        if self.guide_every < 1:
            raise InvalidInputError(f"--guide-every must be at least 1, got {self.guide_every}")

    def guided_steps(self, count: int) -> set[int]:
        """Indices of the steps that get CLIP guidance: every `guide_every`-th one inside the [from, until) fraction."""
        first = math.ceil(self.guide_from * count)
        return {index for index in range(first, count)
                if index < self.guide_until * count and (index - first) % self.guide_every == 0}

    def repeats(self, index: int, count: int) -> int:
        """How many times guided step `index` of `count` is done: `recurrence` inside its range, else once."""
        low, high = self.recurrence_range
        return self.recurrence if low * count <= index < high * count else 1

    def weight(self, index: int, count: int) -> float:
        """The guidance schedule's weight at step `index` of `count`."""
        return guidance_weight(self.guidance_schedule, index / max(count - 1, 1))


@dataclass
class Run:
    """A call's prepared state, which its steps share."""

    plan: Plan
    size: tuple[int, int]  # (width, height)
    sampler: Any  # the diffusers scheduler
    timesteps: list[int]  # the descending timesteps run (after the skipped ones)
    generator: torch.Generator
    precision: str
    init: torch.Tensor | None  # the init images in [0, 1]
    mask: torch.Tensor | None  # (1, 1, H, W), 1 = change
    batch: int = 1  # images sampled together
    x_init: torch.Tensor | None = None  # the init images as samples


@dataclass
class Denoised:
    """What the denoising loop ends with."""

    sample: torch.Tensor  # the final sample, or the last estimate of the clean one when stopped early
    history: list[dict[str, float]]
    steps_done: int
    frames: list[np.ndarray] = field(default_factory=list)
    interrupted: bool = False


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

    @property
    def size_factor(self) -> int:
        """Output sides are multiples of this."""
        return self.model.size_factor

    @property
    def clip_names(self) -> list[str]:
        """The CLIP ensemble as `NAME:WEIGHT` specs, for recipes."""
        return [f"{m.name}:{w:g}" for m, w in self.clip_models]

    def save_model(self, folder: str | Path) -> Path:
        """Save the diffusion model (e.g. after `finetune`) as a diffusers folder loadable by `from_pretrained`."""
        return save_diffusion(self.model, folder)

    def finetune(self, prompt: str, **options: Any) -> FinetuneOutput:
        """DiffusionCLIP fine-tuning for an edit: `pipelines.diffusionclip.finetune(self, prompt, **options)`."""
        from pipelines.diffusionclip import finetune  # that module builds on this one

        return finetune(self, prompt, **options)

    def __call__(self, prompt: str = "", *, size: Size | None = None, steps: int = 100, seed: int | None = None,
                 scheduler: str = "ddim", eta: float = 0.0, skip_steps: int | None = None,
                 edit_strength: float | None = None, clip_scale: float | None = None, tv_scale: float = 150.0,
                 range_scale: float = 50.0, clamp_grad: float = 0.05, guide_from: float = 0.0, guide_until: float = 1.0,
                 guide_every: int = 1, guidance_schedule: str = "constant", recurrence: int = 1,
                 recurrence_range: str | tuple[float, float] = "0:1", backward_steps: int | None = None,
                 backward_lr: float = DEFAULT_BACKWARD_LR, cfg_scale: float | None = None, cutn: int = 32, cut_pow: float = 0.5,
                 augment: str = "default", init_image: InitImages | None = None, init_weight: float | None = None,
                 mask: str | Path | torch.Tensor | None = None, source_text: str | None = None,
                 inversion_steps: int | None = None, inversion_refine: int = 0, precision: str = "auto",
                 num_images: int = 1, keep_best: int | None = None, judge_model: str | None = None,
                 candidates: int | None = None, save_every: int = 50, callback: StepCallback | None = None,
                 progress: bool = True) -> PipelineOutput:
        """Generate (or edit) images; returns them with the history. Ctrl-C ends early and keeps the last estimate.

        `num_images` images are sampled together as one batch from the seed's noise (generation only); `keep_best`
        K returns the K of highest CLIP score against the prompt, best first (`judge_model`, default: the guiding
        models, which is optimistic). An edit inside a `mask`, or a directional one (`source_text`), starts from the
        best, by CLIP loss, of `candidates` starts: its region (the whole image without a mask) as it is, then
        recoloured (pipelines.starts; None: all, REGION_CANDIDATES; 1: as it is)."""
        # 1. Check inputs: settle the plan and the guidance before any work, then seed the run.
        check_precision(precision, self.device)
        prompt, source_text, edit_strength = self._finetuned_edit(prompt, init_image, mask, source_text, skip_steps,
                                                                  edit_strength)
        plan = self.plan(prompt, steps=steps, scheduler=scheduler, eta=eta, skip_steps=skip_steps,
                         edit_strength=edit_strength, clip_scale=clip_scale, init_image=init_image,
                         init_weight=init_weight, mask=mask, source_text=source_text, inversion_steps=inversion_steps,
                         inversion_refine=inversion_refine, cfg_scale=cfg_scale)
        if backward_steps is None:
            backward_steps = 0 if plan.mode in ("generate", "init") else DEFAULT_EDIT_BACKWARD_STEPS
        guidance = GuidanceSettings(tv_scale, range_scale, clamp_grad, guide_from, guide_until, guide_every,
                                    guidance_schedule, recurrence, parse_range(recurrence_range), backward_steps,
                                    backward_lr)
        guidance.check()
        check_cutouts(cutn, cut_pow)
        check_count("--save-every", save_every, 0, MAX_STEPS)
        check_count("--num-images", num_images, 1, MAX_IMAGES)
        candidates = self._candidates(candidates, mask, source_text)
        if num_images > 1 and init_image is not None:
            raise InvalidInputError("--num-images samples several images from noise; an edit makes one per "
                                    "--init-image")
        if keep_best is not None and init_image is not None:
            raise InvalidInputError("--keep-best ranks the images of --num-images; an edit makes one per --init-image")
        ranking = ranking_for(prompt, num_images, keep_best, judge_model, [m for m, _ in self.clip_models],
                              self.device)
        cutouts = MakeCutouts(max((m.image_size for m, _ in self.clip_models), default=224), cutn=cutn, cut_pow=cut_pow,
                              augment=augment)
        texts = (plan.source_text, plan.target) if plan.mode == "directional" else None
        seed, size, init, mask_tensor = self.prepare_run(seed, size, init_image, mask, texts)
        batch = num_images if init is None else init.shape[0]
        self._check_memory(size, cutn if plan.clip_scale else 0, batch)
        generator = torch.Generator(device=self.device).manual_seed(seed)

        # 2. Prepare latents: the timesteps, and the start sample (noise, the noised init image or its inversion).
        sampler, timesteps = self.schedule(plan)
        run = Run(plan, size, sampler, timesteps, generator, precision, init, mask_tensor, batch)
        started = time.perf_counter()
        with explain_out_of_memory(*self._memory_hint(size, cutn)):
            loss_fn = self._loss_fn(run, cutouts, guidance)
            candidates = candidates if loss_fn else 1  # unguided, nothing scores the starts
            with torch.no_grad(), autocast(self.device, precision):
                run.x_init = self.model.from_image(init) if init is not None else None
                start = self._region_start(run, loss_fn, candidates) if candidates > 1 else run.x_init
                x, condition = self._start_sample(run, start)

            # 3. Denoise, guided by the CLIP loss of each step's estimate.
            denoised = self._denoise(run, x, condition, loss_fn, guidance, save_every, callback, progress)

            # 4. Decode the final sample (masked edits composited onto the init) and record the run.
            final = self._decode(run, denoised.sample)
        recipe = self._recipe(prompt, run, seed, guidance, cutouts, init_image, mask, candidates)
        recipe.update(steps_done=denoised.steps_done, interrupted=denoised.interrupted,
                      seconds=round(time.perf_counter() - started, 2))
        own = [{"num_images": num_images, "index": k, "seed": seed} for k in range(1, final.shape[0] + 1)]
        order = ranking.best(final, prompt, own) if ranking is not None else list(range(final.shape[0]))
        images = [tensor_to_pil(final[k:k + 1]) for k in order]
        return PipelineOutput(images, denoised.history, denoised.frames + [frame_of(final[order])], recipe,
                              denoised.interrupted, [own[k] for k in order] if num_images > 1 else [])

    # --- 1. checking the inputs -------------------------------------------------------------------------------

    def _finetuned_edit(self, prompt: str, init_image: Any, mask: Any, source_text: str | None, skip_steps: int | None,
                        edit_strength: float | None) -> tuple[str, str | None, float | None]:
        """(prompt, source text, edit strength): a fine-tuned model applied to images without a prompt makes the
        edit it was tuned for, at the strength it was tuned at."""
        if self.model.finetuned and init_image is not None and mask is None:
            if not prompt and not source_text:
                prompt, source_text = self.model.info["target_text"], self.model.info["source_text"]
            if source_text and skip_steps is None and edit_strength is None:
                edit_strength = self.model.info["edit_strength"]
        return prompt, source_text, edit_strength

    def plan(self, prompt: str, *, steps: int, scheduler: str = "ddim", eta: float = 0.0, skip_steps: int | None = None,
             edit_strength: float | None = None, clip_scale: float | None = None, init_image: Any = None,
             init_weight: float | None = None, mask: Any = None, source_text: str | None = None,
             inversion_steps: int | None = None, inversion_refine: int = 0, cfg_scale: float | None = None) -> Plan:
        """Validate the settings that shape the run, before any work, and settle its mode and defaults."""
        self._check_schedule(steps, scheduler, eta)
        mode = edit_mode(init_image, mask, source_text)
        skip = self._skip(steps, skip_steps, edit_strength, mode)
        self._check_edit(mode, scheduler, eta, inversion_steps, inversion_refine, cfg_scale)
        scale = self._clip_scale(clip_scale, mode)
        if init_weight is not None and not (math.isfinite(init_weight) and init_weight >= 0):
            raise InvalidInputError(f"--init-weight must be a non-negative number, got {init_weight}")
        fidelity = init_weight if init_weight is not None else (1.0 if mode == "directional" else 0.0)
        shared = dict(steps=steps, scheduler=scheduler, eta=eta, skip=skip, clip_scale=scale, fidelity=fidelity,
                      inversion_steps=inversion_steps, inversion_refine=inversion_refine)
        if mode == "directional":
            return Plan(mode, [], directional_target(prompt), source_text.strip(), cfg_scale=1.0, **shared)
        prompts = parse_prompts(prompt)
        check_some_weight(p.weight for p in prompts)
        return Plan(mode, prompts, None, None,
                    cfg_scale=cfg_scale if cfg_scale is not None else self.model.default_cfg_scale, **shared)

    def _check_schedule(self, steps: int, scheduler: str, eta: float) -> None:
        """Validate the step count, the scheduler and its noise."""
        check_count("--steps", steps, 1, self.model.num_train_timesteps)
        if scheduler not in SCHEDULERS:
            raise InvalidInputError(f"unknown scheduler {scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
        if not (math.isfinite(eta) and eta >= 0) or (eta and scheduler != "ddim"):
            raise InvalidInputError(f"eta must be a non-negative number and applies to --scheduler ddim, got {eta}")

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

    def _check_edit(self, mode: str, scheduler: str, eta: float, inversion_steps: int | None, inversion_refine: int,
                    cfg_scale: float | None) -> None:
        """Validate the settings that apply to some modes only: inversion's, and classifier-free guidance."""
        if mode == "directional" and (scheduler != "ddim" or eta):
            raise InvalidInputError("a --source-text edit inverts the image with deterministic DDIM; "
                                    "use --scheduler ddim with --eta 0")
        if inversion_steps is not None and (mode != "directional" or inversion_steps < 1):
            raise InvalidInputError("--inversion-steps (at least 1) applies to --source-text edits")
        if inversion_refine and (mode != "directional" or inversion_refine < 0):
            raise InvalidInputError("--inversion-refine (0 or more) applies to --source-text edits")
        if inversion_steps is not None:
            check_count("--inversion-steps", inversion_steps, 1, MAX_STEPS)
        check_count("--inversion-refine", inversion_refine, 0, MAX_INVERSION_REFINE)
        conditional = self.model.text_conditioned
        if cfg_scale is not None and (not conditional or mode == "directional" or not math.isfinite(cfg_scale)):
            raise InvalidInputError(f"--cfg-scale applies to text-conditioned models outside --source-text edits; "
                                    f"{self.model.name} {'is unconditional' if not conditional else 'cannot use it here'}")

    def _clip_scale(self, clip_scale: float | None, mode: str) -> float:
        """The CLIP guidance scale: as given, or the default (0 for the edit a fine-tuned model makes by itself)."""
        finetuned_edit = self.model.finetuned and mode == "directional"
        scale = clip_scale if clip_scale is not None else (0.0 if finetuned_edit else DEFAULT_CLIP_SCALE)
        if not (math.isfinite(scale) and scale >= 0):
            raise InvalidInputError(f"--clip-scale must be a non-negative number, got {scale}")
        if scale and not self.clip_models:
            raise InvalidInputError("this run is CLIP-guided but no CLIP model is loaded; pass --clip-model "
                                    f"{DEFAULT_CLIP} (from_pretrained(clip_models=[...])) or --clip-scale 0")
        return scale

    def prepare_run(self, seed: int | None, size: Size | None, init_image: InitImages | None,
                    mask: str | Path | torch.Tensor | None = None, texts: tuple[str, str] | None = None
                    ) -> tuple[int, tuple[int, int], torch.Tensor | None, torch.Tensor | None]:
        """Seed the run and ready the device: (seed, (width, height), the init images in [0, 1] or None, the mask
        or None; `--mask auto` is found from a directional edit's (source, target) `texts`)."""
        seed = resolve_seed(seed)
        prepare_device(self.device)
        size = round_size(parse_size(self.model.native_size if size is None else size), self.size_factor,
                          self.model.name)
        torch.manual_seed(seed)
        return seed, size, *load_edit_inputs(init_image, mask, size, self.device, self.clip_models, texts)

    # --- 2. preparing the latents -----------------------------------------------------------------------------

    def schedule(self, plan: Plan) -> tuple[Any, list[int]]:
        """The plan's scheduler and the timesteps it runs (after the skipped ones)."""
        sampler = make_scheduler(plan.scheduler, self.model.scheduler_config, plan.steps,
                                 invertible=plan.mode == "directional")
        return sampler, [int(t) for t in sampler.timesteps[plan.skip:]]

    def invert(self, x: torch.Tensor, plan: Plan, sampler: Any, timesteps: list[int]) -> torch.Tensor:
        """DDIM-invert clean samples up to the run's first timestep, with the inversion model and the source text."""
        return ddim_invert(self.inversion_model, x, inversion_timesteps(timesteps, plan.inversion_steps),
                           self.model.condition(plan.source_text), final_alpha(sampler), plan.inversion_refine)

    def _region_start(self, run: Run, loss_fn: GuidanceLoss, candidates: int) -> torch.Tensor:
        """An edit's start, as samples: of its init images as they are and `candidates` - 1 recolourings of their
        region (the whole image without a mask), the one whose image has the lowest CLIP loss, per image."""
        pool = torch.cat([run.init, region_recolourings(run.init, start_region(run.init, run.mask), candidates - 1)])
        best = best_candidates(pool, run.batch, lambda images: loss_fn.clip_loss(images, reduction="none"))
        return self.model.from_image(best)

    def _start_sample(self, run: Run, start: torch.Tensor | None) -> tuple[torch.Tensor, Any]:
        """The first sample of the run, from noise or from `start` (samples of the images the edit starts from),
        and the UNet's condition while generating."""
        plan = run.plan
        if plan.mode == "directional":
            return self.invert(start, plan, run.sampler, run.timesteps), self.model.condition(plan.target)
        positive = ", ".join(p.text for p in plan.prompts if p.weight > 0)
        negative = ", ".join(p.text for p in plan.prompts if p.weight < 0)
        condition = self.model.condition(positive, negative, plan.cfg_scale)
        noise = torch.randn((run.batch, *self.model.sample_shape(*run.size)), generator=run.generator, device=self.device)
        if start is None:
            return noise, condition
        return self.model.add_noise(start, noise, run.timesteps[0]), condition

    @staticmethod
    def _candidates(candidates: int | None, mask: Any, source_text: str | None) -> int:
        """The starts an edit inside a mask or a directional edit draws (REGION_CANDIDATES when not given); other
        runs start from one."""
        if candidates is None:
            return REGION_CANDIDATES if recolourable(mask, source_text) else 1
        if candidates != 1 and not recolourable(mask, source_text):
            raise InvalidInputError("--candidates with --method sampler applies to edits inside a --mask or with "
                                    "--source-text; drop it, or use --method noise")
        check_count("--candidates", candidates, 1, REGION_CANDIDATES)
        return candidates

    def _check_memory(self, size: tuple[int, int], cutn: int, batch: int) -> None:
        """Refuse a run whose estimated memory exceeds what the device has free (guidance.memory)."""
        clip_size = max((m.image_size for m, _ in self.clip_models), default=224)
        needed = estimate_run_bytes(*size, cutn, clip_size, batch, generator="diffusion")
        check_memory(needed, self.device, f"CLIP-guided diffusion of {batch} image(s) at {size[0]}x{size[1]} with "
                     f"{cutn} cutouts", "--cutn, --size or the number of --init-image")

    def _memory_hint(self, size: tuple[int, int], cutn: int) -> tuple[str, str]:
        """What a run does and how to make it smaller, for an out-of-memory error."""
        (width, height), factor = size, self.size_factor
        smaller = f"{width * 3 // 4 // factor * factor}x{height * 3 // 4 // factor * factor}"
        return (f"CLIP-guided diffusion at {width}x{height} with {cutn} cutouts",
                f"try --size {smaller}, --cutn {max(1, cutn // 2)}, --guide-every 2 or --precision bf16")

    # --- 3. denoising -----------------------------------------------------------------------------------------

    def _loss_fn(self, run: Run, cutouts: MakeCutouts, guidance: GuidanceSettings) -> GuidanceLoss | None:
        """The loss guidance descends, or None when guidance is off (`clip_scale` 0)."""
        plan = run.plan
        if not plan.clip_scale:
            return None
        if plan.mode == "directional":
            clip_loss: torch.nn.Module = DirectionalCLIPLoss(
                self.clip_models, run.init, plan.source_text, plan.target, cutouts=cutouts, l1_weight=plan.fidelity,
                target_weight=TARGET_WEIGHT)
        else:
            clip_loss = CLIPLoss(self.clip_models, plan.prompts, cutouts=cutouts)
        fidelity = plan.fidelity if plan.mode in ("init", "masked") else 0.0
        return GuidanceLoss(clip_loss, plan.clip_scale, guidance.tv_scale, guidance.range_scale, fidelity, run.init,
                            run.mask)

    def _denoise(self, run: Run, x: torch.Tensor, condition: Any, loss_fn: GuidanceLoss | None,
                 guidance: GuidanceSettings, save_every: int, callback: StepCallback | None,
                 progress: bool) -> Denoised:
        """Run the scheduler over the run's timesteps, guiding the chosen steps (each redone `recurrence` times in
        its range, re-noised in between); the callback or Ctrl-C stop it."""
        count = len(run.timesteps)
        guided = guidance.guided_steps(count) if loss_fn else set()
        latent_mask = F.adaptive_max_pool2d(run.mask, x.shape[-2:]) if run.mask is not None else None
        estimate = run.x_init if run.x_init is not None else x
        records: list[Record] = []
        frames: list[np.ndarray] = []
        steps_done, interrupted = 0, False
        bar = tqdm(run.timesteps, desc="diffusion", disable=not progress, dynamic_ncols=True)
        try:
            for index, t in enumerate(bar):
                step_loss = loss_fn if index in guided else None
                repeats = guidance.repeats(index, count) if step_loss else 1
                for repeat in range(repeats):
                    if repeat:  # time travel: back from the step's result to its timestep, with fresh noise
                        x = renoise(x, self._alpha_after(run, index), self.model.alpha_bar(t), run.generator)
                    eps, record = self._predict_eps(run, x, t, condition, step_loss, guidance,
                                                    guidance.weight(index, count))
                    x, estimate = scheduler_step(run.sampler, eps, t, x, run.plan.eta, run.generator)
                    if latent_mask is not None:
                        x = self._keep_unmasked(run, x, latent_mask, index)
                if record is not None:
                    records.append((index + 1, t, *record))
                steps_done = step = index + 1
                if save_every and (step % save_every == 0 or step == len(run.timesteps)):
                    preview = self._decode(run, estimate)
                    frames.append(frame_of(preview))
                    if records:
                        bar.set_postfix(loss=f"{records[-1][2].item():.4g}")
                    if callback is not None and callback(step, preview):
                        break
        except KeyboardInterrupt:
            interrupted = True
        final = x if steps_done == len(run.timesteps) else estimate
        return Denoised(final, _history(records), steps_done, frames, interrupted)

    def _predict_eps(self, run: Run, x: torch.Tensor, t: int, condition: Any, loss_fn: GuidanceLoss | None,
                     guidance: GuidanceSettings, weight: float) -> tuple[torch.Tensor, tuple[Any, ...] | None]:
        """The noise prediction at one step, guided down `loss_fn` when given (then backward-guided when asked):
        (eps, (loss, whether the gradient was finite, the CLIP loss's parts) or None)."""
        with autocast(self.device, run.precision):
            if loss_fn is None:
                with torch.no_grad():
                    return self.model.predict_eps(x, t, condition), None
            eps, loss, finite = guided_eps(self.model, x, t, condition, loss_fn, guidance.clamp_grad, weight)
            if guidance.backward_steps:
                eps, _ = backward_eps(self.model, x, t, eps, loss_fn, guidance.backward_steps, guidance.backward_lr,
                                      weight)
            return eps, (loss, finite, loss_fn.last_losses)

    def _alpha_after(self, run: Run, index: int) -> float:
        """The noise level the sample is at after step `index`: the next timestep's, or DDIM's final one."""
        following = previous_timestep(run.timesteps, index)
        return final_alpha(run.sampler) if following is None else self.model.alpha_bar(following)

    def _keep_unmasked(self, run: Run, x: torch.Tensor, latent_mask: torch.Tensor, index: int) -> torch.Tensor:
        """Blended Diffusion: outside the mask, replace the sample by the init noised to the next timestep."""
        following = previous_timestep(run.timesteps, index)
        known = run.x_init if following is None else self.model.add_noise(
            run.x_init, torch.randn(x.shape, generator=run.generator, device=self.device), following)
        return x * latent_mask + known * (1 - latent_mask)

    # --- 4. decoding ------------------------------------------------------------------------------------------

    def _decode(self, run: Run, sample: torch.Tensor) -> torch.Tensor:
        """Samples as [0, 1] images, masked edits composited onto the init images."""
        with torch.no_grad(), autocast(self.device, run.precision):
            images = self.model.to_image(sample).clamp(0, 1)
        return images if run.mask is None else images * run.mask + run.init * (1 - run.mask)

    def _recipe(self, prompt: str, run: Run, seed: int, guidance: GuidanceSettings, cutouts: MakeCutouts,
                init_image: InitImages | None, mask: Any, candidates: int) -> dict[str, Any]:
        """The settings that reproduce the run, for the PNGs."""
        plan, (width, height), directional = run.plan, run.size, run.plan.mode == "directional"
        return clean_recipe({
            "pipeline": "clip_guided_diffusion", "prompt": prompt, "model": self.model.name, "size": f"{width}x{height}",
            "steps": plan.steps, "skip_steps": plan.skip, "scheduler": plan.scheduler, "eta": plan.eta, "seed": seed,
            "clip_scale": plan.clip_scale, **asdict(guidance),
            "recurrence_range": ":".join(f"{v:g}" for v in guidance.recurrence_range),
            "cfg_scale": plan.cfg_scale if self.model.text_conditioned and not directional else None,
            "cutn": cutouts.cutn, "cut_pow": cutouts.cut_pow, "augment": cutouts.augment,
            "clip_models": self.clip_names if plan.clip_scale else None,
            "init_image": image_names(init_image), "init_weight": plan.fidelity if run.init is not None else None,
            "mask": str(mask) if isinstance(mask, (str, Path)) else None, "source_text": plan.source_text,
            "inversion_steps": (plan.inversion_steps or len(run.timesteps)) if directional else None,
            "inversion_refine": plan.inversion_refine if directional else None,
            "candidates": candidates if run.mask is not None or directional else None,
            "finetuned_from": self.model.info.get("finetuned_from"), "precision": run.precision,
            "device": str(self.device),
        })


def _history(records: list[Record]) -> list[dict[str, float]]:
    """The guided steps' records as history entries (one host copy for all the losses)."""
    losses = torch.stack([r[2] for r in records]).tolist() if records else []
    finite = torch.stack([r[3] for r in records]).tolist() if records else []
    return [{"step": step, "timestep": t, "loss": loss, "skipped": float(not ok),
             **{key: float(value) for key, value in parts.items()}}
            for (step, t, _, _, parts), loss, ok in zip(records, losses, finite)]


def image_names(init_image: Any) -> list[str] | None:
    """The file names of the init images, for the recipe."""
    if init_image is None or isinstance(init_image, torch.Tensor):
        return None
    return [str(p) for p in ([init_image] if isinstance(init_image, (str, Path)) else init_image)]




def _finetune_from_arguments(pipe: CLIPGuidedDiffusionPipeline, args: argparse.Namespace,
                             seed: int) -> CLIPGuidedDiffusionPipeline | None:
    """The CLI's `--finetune-steps`: a pipeline on the tuned model (saved with `--save-model`); None if interrupted."""
    tuned = pipe.finetune(args.prompt, init_image=args.init_image, source_text=args.source_text,
                          finetune_steps=args.finetune_steps, lr=args.finetune_lr, ddim_steps=args.finetune_ddim_steps,
                          steps=args.steps,
                          edit_strength=DEFAULT_EDIT_STRENGTH if args.edit_strength is None else args.edit_strength,
                          inversion_steps=args.inversion_steps, inversion_refine=args.inversion_refine,
                          init_weight=args.init_weight, size=args.size, seed=seed, precision=args.precision)
    if args.save_model:
        tuned.pipeline.save_model(args.save_model)
        print(f"fine-tuned model saved to {args.save_model} ({tuned.recipe['finetune_steps']} steps)", file=sys.stderr)
    if tuned.interrupted:
        print("fine-tuning interrupted; no edit made", file=sys.stderr)
        return None
    return tuned.pipeline


def main(argv: list[str]) -> int:
    """Run the CLI; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    output = png_output_path(args.output)
    if args.method is None:  # recorded in the command, so that the recipe remakes the image with the same method
        args.method = default_method(args, parser)
        argv = ["--method", args.method, *argv]
    check_method_options(args, parser)
    if args.method == "noise":
        return noise_main(args, parser, argv, output)
    if args.size is not None:
        parse_size(args.size)
    if args.save_model and not args.finetune_steps:
        raise InvalidInputError("--save-model saves a fine-tuned model; add --finetune-steps N")
    if args.finetune_steps and args.skip_steps is not None:
        raise InvalidInputError("fine-tuning sets its start step with --edit-strength, not --skip-steps")
    count = len(args.init_image) if args.init_image else args.num_images
    paths, running = check_batch_outputs(output, count, args.keep_best, args.video)
    if args.save_model:
        check_folder(args.save_model, "--save-model folder")
    seed = resolve_seed(args.seed)
    candidates = parser.parse_args(argv, argparse.Namespace(candidates=None)).candidates  # None unless given
    pipe = CLIPGuidedDiffusionPipeline.from_pretrained(args.model, args.clip_model, args.device)
    command = command_line("pipelines.clip_guided_diffusion",
                           [*argv, *([] if args.seed is not None else ["--seed", str(seed)])])
    if args.finetune_steps:
        pipe = _finetune_from_arguments(pipe, args, seed)
        if pipe is None:
            return 130

    def save_progress(step: int, images: torch.Tensor) -> None:
        save_partial(images, running, command, step)

    result = pipe(args.prompt, size=args.size, steps=args.steps, seed=seed, scheduler=args.scheduler, eta=args.eta,
                  skip_steps=args.skip_steps, edit_strength=args.edit_strength, clip_scale=args.clip_scale,
                  tv_scale=args.tv_scale, range_scale=args.range_scale, clamp_grad=args.clamp_grad,
                  guide_from=args.guide_from, guide_until=args.guide_until, guide_every=args.guide_every,
                  guidance_schedule=args.guidance_schedule, recurrence=args.recurrence,
                  recurrence_range=args.recurrence_range, backward_steps=args.backward_steps,
                  backward_lr=args.backward_lr, cfg_scale=args.cfg_scale, cutn=args.cutn, cut_pow=args.cut_pow, augment=args.augment,
                  init_image=args.init_image, init_weight=args.init_weight, mask=args.mask,
                  source_text=args.source_text, inversion_steps=args.inversion_steps,
                  inversion_refine=args.inversion_refine, precision=args.precision, num_images=args.num_images,
                  keep_best=args.keep_best, judge_model=args.judge_model, candidates=candidates,
                  save_every=args.save_every, callback=save_progress)
    own = [{"init_image": path} for path in args.init_image] if args.init_image else ()
    return finish_cli(result, paths, command, args.video, own, running)


# --- noise optimisation (--method noise) ------------------------------------------------------------------------

# Options of the per-step sampler that noise optimisation does not use.
SAMPLER_ONLY = ("scheduler", "eta", "skip_steps", "edit_strength", "clip_scale", "tv_scale", "range_scale",
                "clamp_grad", "guide_from", "guide_until", "guide_every", "guidance_schedule", "recurrence",
                "recurrence_range", "backward_steps", "backward_lr", "inversion_steps", "inversion_refine",
                "finetune_steps", "save_model")
NOISE_ONLY = ("iterations", "contrast")  # options of noise optimisation that the sampler does not use


def default_method(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    """The method when --method is not given: the sampler for edits and with sampler-only options, else the one the
    model's folder recommends (`method` in its clip_guidance.json), else the sampler (the field's default)."""
    editing = args.init_image or args.mask or args.source_text
    if editing or any(getattr(args, name) != parser.get_default(name) for name in SAMPLER_ONLY):
        return "sampler"
    recommended = folder_info(args.model).get("method")
    return recommended if recommended in METHODS else "sampler"


def check_method_options(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Refuse, in one line, options given for the other --method than the one chosen."""
    other = SAMPLER_ONLY if args.method == "noise" else NOISE_ONLY
    for name in other:
        if getattr(args, name) != parser.get_default(name):
            wanted = "sampler" if args.method == "noise" else "noise"
            raise InvalidInputError(f"--{name.replace('_', '-')} applies to --method {wanted}, not {args.method}")


def noise_main(args: argparse.Namespace, parser: argparse.ArgumentParser, argv: list[str], output: Path) -> int:
    """The CLI's `--method noise`: noise optimisation (pipelines.noise_optimization), with `--steps` the short
    sampler's and `--iterations` the optimisation's."""
    check_count("--iterations", args.iterations, 1, MAX_STEPS)
    check_count("--num-images", args.num_images, 1, MAX_IMAGES)
    if args.init_image and len(args.init_image) > 1:
        raise InvalidInputError("--method noise edits one image at a time; give one --init-image")
    paths, running = check_batch_outputs(output, args.num_images, args.keep_best, args.video)
    seed = resolve_seed(args.seed)
    given = parser.parse_args(argv, argparse.Namespace(steps=None, augment=None))  # None unless given: the method's own
    noise = NoiseOptimizationPipeline.from_pretrained(args.model, args.clip_model or [DEFAULT_CLIP], args.device,
                                                      given.steps, args.cfg_scale)
    command = command_line("pipelines.clip_guided_diffusion",
                           [*argv, *([] if args.seed is not None else ["--seed", str(seed)])])

    def save_progress(step: int, images: torch.Tensor) -> None:
        save_partial(images, running, command, step)

    result = noise(args.prompt, steps=args.iterations, seed=seed, num_images=args.num_images,
                   candidates=args.candidates, contrast=args.contrast,
                   **({"augment": given.augment} if given.augment else {}),
                   keep_best=args.keep_best, judge_model=args.judge_model, cutn=args.cutn,
                   cut_pow=args.cut_pow, init_image=args.init_image[0] if args.init_image else None,
                   init_weight=args.init_weight, mask=args.mask, source_text=args.source_text,
                   precision=args.precision, save_every=args.save_every, callback=save_progress,
                   **({"size": args.size} if args.size is not None else {}))
    result.recipe.update(method="noise")
    return finish_cli(result, paths, command, args.video, running=running)


SPEC = PipelineSpec(name="clip_guided_diffusion", title="CLIP-guided diffusion",
                    module="pipelines.clip_guided_diffusion",
                    load=lambda model, clip_models, device: CLIPGuidedDiffusionPipeline.from_pretrained(
                        model, clip_models, device),
                    model_label="Diffusion model", model_flag="--model", model_choices=known_diffusion_names,
                    offline_models=tuple(BUILTIN_DIFFUSION_MODELS), cli_flags=("--method", "sampler"))


if __name__ == "__main__":
    sys.exit(run_cli(main))
