"""Latent optimisation under CLIP: move any generator's latent until its image matches text and image prompts.

This is the VQGAN-CLIP loop, for every `generators.LatentGenerator`: `pipelines.vqgan_clip` runs it on a VQGAN,
`pipelines.pixels_clip` on the pixels themselves. Each step: decode the latent to [0, 1] images, composite the
masked edit, cut out and augment, score with the CLIP ensemble, step the optimiser, let the generator keep the
latent valid.

Editing: `init_image` + `mask` changes only the white part of the mask; `init_image` + `source_text` moves the
image along the CLIP direction from the source text to the prompt (DiffusionCLIP-style loss).
"""

from __future__ import annotations

import argparse
import inspect
import sys
import time
from functools import partial, wraps
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

from pipelines.parsers import (MAX_CANDIDATES, MAX_CUTN_BATCHES, MAX_IMAGES, OPTIMIZER_NAMES,
                               RECOLOURINGS, REGION_CANDIDATES, generator_arguments, latent_parser)

if __name__ == "__main__":  # parse first: --help and usage errors answer before the heavy imports below
    latent_parser("pipelines.latent_optimization", "LatentOptimizationPipeline", generator_arguments).parse_args()

import numpy as np
import torch
from tqdm.auto import tqdm

from generators.base import LatentGenerator
from generators.registry import load_generator
from guidance.clip_loss import CLIPLoss, DirectionalCLIPLoss, ImagePrompt
from guidance.clip_models import CLIPEncoder, load_clip_ensemble
from guidance.cutouts import AUGMENT_PRESETS, MakeCutouts
from guidance.errors import InvalidInputError
from guidance.images import load_image, tensor_to_pil
from guidance.memory import check_memory, estimate_run_bytes
from guidance.prompts import parse_prompt, parse_prompts
from guidance.runtime import (autocast, check_compile, explain_out_of_memory, pick_device, prepare_device,
                              resolve_precision, resolve_seed)
from guidance.validation import MAX_STEPS, check_count, check_number, check_some_weight
from pipelines.common import (DEFAULT_CLIP, TARGET_WEIGHT, PipelineOutput, StepCallback, check_batch_outputs,
                              check_cutouts, clean_recipe, command_line, directional_target, edit_mode, finish_cli,
                              frame_of, load_edit_inputs, parse_size, round_size, run_cli, save_partial)
from pipelines.ranking import ranking_for
from pipelines.starts import CANDIDATE_CHUNK, best_candidates, recolourable, region_recolourings, start_region

OPTIMIZERS = dict(zip(OPTIMIZER_NAMES, (torch.optim.Adam, torch.optim.AdamW, torch.optim.RAdam, torch.optim.SGD,
                                         partial(torch.optim.SGD, momentum=0.9, nesterov=True)),  # ReNO's optimiser
                      strict=True))


# A directional edit without a mask also descends the target text's own loss, and holds to the source by an L1 of
# this weight rather than 1: on the meaning benchmark's whole grid (96 recolourings of a rendered shape, the whole
# image free to change) VQGAN-CLIP goes from 88.5 to 96.9% colour hit and noise optimisation from 75.0 to 87.5%,
# both changing the background more (docs/shapes_models.md, "The target text in unmasked edits"). Inside a mask
# both stay at 1 (TARGET_WEIGHT).
WHOLE_IMAGE_TARGET_WEIGHT = 0.3
WHOLE_IMAGE_FIDELITY = 0.3


def directional_weights(masked: bool) -> tuple[float, float]:
    """A directional edit's (target text weight, default L1 weight to the source): TARGET_WEIGHT and 1 inside a mask,
    WHOLE_IMAGE_TARGET_WEIGHT and WHOLE_IMAGE_FIDELITY without."""
    return (TARGET_WEIGHT, 1.0) if masked else (WHOLE_IMAGE_TARGET_WEIGHT, WHOLE_IMAGE_FIDELITY)


def backward_over_cutout_batches(loss: Callable[..., torch.Tensor], images: torch.Tensor, batches: int,
                                 context: Callable[[], Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Disco Diffusion's `cutn_batches`: the per-image CLIP loss of leaf `images` averaged over `batches` batches of
    cutouts, each batch backpropagated into `images.grad` before the next is cut (memory of one batch). Returns the
    averaged per-image losses (B,) and the averaged `last_losses` breakdown, detached; `context` wraps each forward
    (autocast)."""
    total = images.new_zeros(images.shape[0], dtype=torch.float32)
    parts: dict[str, torch.Tensor] = {}
    for _ in range(batches):
        with context():
            per_image = loss(images, reduction="none") / batches
        per_image.sum().backward()
        total = total + per_image.detach()
        for key, value in loss.last_losses.items():
            parts[key] = parts.get(key, 0) + value / batches
    return total, parts


def clip_per_image_(grad: torch.Tensor, max_norm: float) -> None:
    """Scale each image's gradient (dim 0 indexes images) in place down to a norm of at most `max_norm`, as
    `torch.nn.utils.clip_grad_norm_` does for the whole tensor."""
    norms = grad.flatten(1).float().norm(dim=1)
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    grad.mul_(scale.to(grad.dtype).view(-1, *[1] * (grad.ndim - 1)))


def with_call_settings(call: Callable[..., PipelineOutput], settings: dict[str, Any]) -> Callable[..., PipelineOutput]:
    """A pipeline's `call` with other keyword defaults: a subclass's own (`call_settings`), in its signature (what
    the CLIs, the app and batch jobs read) and in its calls."""
    signature = inspect.signature(call)
    unknown = set(settings) - set(signature.parameters)
    if unknown:
        raise TypeError(f"{call.__qualname__} has no option {', '.join(sorted(unknown))}")

    @wraps(call)
    def with_settings(*args: Any, **options: Any) -> PipelineOutput:
        return call(*args, **{**settings, **options})

    with_settings.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[p.replace(default=settings.get(p.name, p.default)) for p in signature.parameters.values()])
    return with_settings


class LatentOptimizationPipeline:
    """A generator and a CLIP ensemble, loaded once; each call optimises a fresh latent.

    Subclasses name the pipeline and its generator's recipe key, and set the defaults that depend on the
    generator (`default_size`, `default_lr`); everything else is shared.
    """

    name: ClassVar[str] = "latent_optimization"  # the recipe's 'pipeline'
    model_key: ClassVar[str] = "generator"  # the recipe key (and CLI option) naming the generator's model
    default_size: ClassVar[tuple[int, int]] = (256, 256)
    default_lr: ClassVar[float] = 0.1
    memory_profile: ClassVar[str] = "vqgan"  # the generator's row in guidance.memory.BYTES_PER_IMAGE_PIXEL

    def __init__(self, generator: LatentGenerator, clip_models: Sequence[tuple[CLIPEncoder, float]],
                 model_name: str = "generator"):
        self.generator = generator.eval().requires_grad_(False)
        self.clip_models = list(clip_models)
        self.model_name = model_name
        self.device = generator.device

    @classmethod
    def from_pretrained(cls, generator: str = "pixels", model: str = "fft", clip_models: Sequence[str] = (DEFAULT_CLIP,),
                        device: str | torch.device | None = None, **generator_options: Any) -> "LatentOptimizationPipeline":
        """Load a registered generator (`kind`, model name) and CLIP models (`NAME[:PRETRAINED][:WEIGHT]` specs)."""
        device = pick_device(device) if not isinstance(device, torch.device) else device
        members = load_clip_ensemble(clip_models, device)
        return cls(load_generator(generator, model, device=device, **generator_options), members, model_name=str(model))

    @classmethod
    def add_model_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """The CLI options that choose the generator."""
        generator_arguments(parser)

    @classmethod
    def from_arguments(cls, args: argparse.Namespace, clip_models: Sequence[str]) -> "LatentOptimizationPipeline":
        """The pipeline the parsed CLI options ask for."""
        return cls.from_pretrained(args.generator, args.model, clip_models, args.device)

    def prepare(self, prompt: str) -> None:
        """Set up what depends on the prompt before a call (nothing here; a text-conditioned generator follows it)."""

    def generator_recipe(self) -> dict[str, Any]:
        """The generator's own settings for the recipe, beside its model name (none here)."""
        return {}

    @property
    def size_factor(self) -> int:
        """Output sides are multiples of this."""
        return self.generator.factor

    def __call__(self, prompt: str = "", *, size: str | int | tuple[int, int] | None = None, steps: int = 300,
                 seed: int | None = None, lr: float | None = None, optimizer: str = "adam", cutn: int = 32,
                 cut_pow: float = 1.0, augment: str = "geometric", image_prompts: Sequence[str | ImagePrompt] = (),
                 init_image: str | Path | torch.Tensor | None = None, init_weight: float | None = None,
                 mask: str | Path | torch.Tensor | None = None, source_text: str | None = None,
                 num_images: int = 1, keep_best: int | None = None, judge_model: str | None = None,
                 cutn_batches: int = 1, grad_clip: float | None = None, best_step: bool = False,
                 candidates: int | None = None, contrast: float = 0.0, precision: str = "auto", compile: bool = False,
                 save_every: int = 50, callback: StepCallback | None = None, progress: bool = True) -> PipelineOutput:
        """Generate (or edit) `num_images` images together; returns them with the history. Ctrl-C ends early and
        keeps the last images.

        The loss is the sum of the images' own losses, so the images do not interact; image k starts from the k-th
        of the `num_images` latents drawn from `seed`. `keep_best` K ranks them by CLIP score (`judge_model`, default
        the guiding models) and returns the best K, best first. `cutn_batches` M averages the CLIP loss over M batches
        of `cutn` cutouts, backpropagated one batch at a time (memory of one batch). `grad_clip` clips each image's
        latent gradient norm; `best_step` returns each image at its lowest loss, not the last. `candidates` N draws N
        random latents per image and starts from the one whose image the CLIP loss likes best; an edit inside a
        `mask`, or a directional one (`source_text`), draws its region (the whole image without a mask) as it is,
        then its RECOLOURINGS (pipelines.starts), then random latents; None is REGION_CANDIDATES for those edits,
        else 1. `contrast` w subtracts w times the distance to the empty text from the CLIP loss
        (guidance.CLIPLoss). `precision` 'auto' is bf16 on CUDA GPUs that support it, else fp32; `compile` runs the
        decode and the loss through torch.compile. The generator's `latent_penalty` joins the loss."""
        # 1. Check the settings, before any work.
        self.prepare(prompt)
        precision = resolve_precision(precision, self.device)
        lr = self.default_lr if lr is None else lr
        settings = self._check_settings(prompt, steps, lr, optimizer, cutn, cut_pow, augment, init_image, init_weight,
                                        mask, source_text, image_prompts, save_every)
        check_count("--num-images", num_images, 1, MAX_IMAGES)
        check_count("--cutn-batches", cutn_batches, 1, MAX_CUTN_BATCHES)
        recoloured_starts = recolourable(mask, source_text)
        if candidates is None:
            candidates = REGION_CANDIDATES if recoloured_starts else 1
        check_count("--candidates", candidates, 1, MAX_CANDIDATES)
        if grad_clip is not None:
            check_number("--grad-clip", grad_clip, above=0)
        ranking = ranking_for(prompt, num_images, keep_best, judge_model, [m for m, _ in self.clip_models],
                              self.device)
        if compile:
            check_compile(self.device)
        seed = resolve_seed(seed)
        prepare_device(self.device)
        width, height = round_size(parse_size(self.default_size if size is None else size), self.size_factor,
                                   self.model_name)
        clip_size = max(m.image_size for m, _ in self.clip_models)
        what = f"{self.name} at {width}x{height} with {cutn} cutouts" + (f", {num_images} images" if num_images > 1 else "")
        check_memory(estimate_run_bytes(width, height, cutn, clip_size, num_images, self.memory_profile, cutn_batches,
                                        precision), self.device, what, "--cutn (--cutn-batches keeps memory flat), --num-images or --size")
        torch.manual_seed(seed)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        # 2. Prepare the inputs and the loss (targets are embedded once, here).
        texts = (source_text, settings["target"]) if source_text else None
        init, mask_tensor = load_edit_inputs(init_image, mask, (width, height), self.device, self.clip_models, texts)
        if init is not None and init.shape[0] != 1:
            raise InvalidInputError(f"{self.name} edits one image at a time, got {init.shape[0]}")
        self.generator.keep_outside(init if mask_tensor is not None else None, mask_tensor)
        target_weight, directional_fidelity = directional_weights(mask_tensor is not None)
        fidelity = init_weight if init_weight is not None else (directional_fidelity if source_text else 0.0)
        cutouts = MakeCutouts(clip_size, cutn=cutn, cut_pow=cut_pow, augment=augment)
        if source_text:
            clip_loss: torch.nn.Module = DirectionalCLIPLoss(
                self.clip_models, init, source_text, settings["target"], cutouts=cutouts, l1_weight=fidelity,
                target_weight=target_weight)
        else:
            clip_loss = CLIPLoss(self.clip_models, settings["prompts"], settings["image_prompts"], cutouts=cutouts,
                                 contrast=contrast)
        decode: Any = self.generator
        if compile:
            decode, clip_loss = self._compiled_generator(), torch.compile(clip_loss)
        # 3. Prepare the latents: N random ones, or N copies of the init image's (N variations of one edit); with
        #    `candidates`, each starts from the best of that many (an edit's: recoloured regions, then random).
        def render(latent: torch.Tensor) -> torch.Tensor:
            images = decode(latent).float()
            return images if mask_tensor is None else images * mask_tensor + init * (1 - mask_tensor)

        factor = self.size_factor
        smaller = f"{width * 3 // 4 // factor * factor}x{height * 3 // 4 // factor * factor}"
        memory_hint = (what, f"try --size {smaller}, --cutn {max(1, cutn // 2)} with --cutn-batches "
                             f"{cutn_batches * 2}, fewer --num-images or --precision bf16")
        with explain_out_of_memory(*memory_hint), torch.no_grad():  # the candidates are scored here
            z_source = None
            if init is None:
                z_init = self.generator.random_latent(num_images * candidates, height, width, generator)
            else:
                z_source = self.generator.encode(init)
                z_source = z_init = z_source.expand(num_images, *z_source.shape[1:]).clone()
                if recoloured_starts and candidates > 1:
                    z_init = self._region_starts(z_source, init, start_region(init, mask_tensor), candidates,
                                                 (height, width), generator)
            if z_init.shape[0] > num_images:
                with autocast(self.device, precision):
                    z_init = best_candidates(z_init, num_images, lambda z: clip_loss(render(z), reduction="none"))
        z = z_init.clone().requires_grad_(True)
        opt = OPTIMIZERS[optimizer]([z], lr=lr)
        recipe = clean_recipe({
            "pipeline": self.name, "prompt": prompt, "size": f"{width}x{height}", "steps": steps, "seed": seed,
            "num_images": num_images if num_images > 1 else None, "lr": lr, "optimizer": optimizer, "cutn": cutn,
            "cutn_batches": cutn_batches if cutn_batches > 1 else None, "cut_pow": cut_pow, "augment": augment,
            "clip_models": [f"{m.name}:{w:g}" for m, w in self.clip_models], self.model_key: self.model_name,
            "image_prompts": [p if isinstance(p, str) else p.label for p in image_prompts],
            "init_image": str(init_image) if isinstance(init_image, (str, Path)) else None,
            "init_weight": fidelity if init is not None else None,
            "mask": str(mask) if isinstance(mask, (str, Path)) else None, "source_text": source_text,
            "grad_clip": grad_clip, "best_step": best_step or None, "keep_best": keep_best,
            "candidates": candidates if candidates > 1 and (init is None or recoloured_starts) else None,
            "contrast": contrast if contrast and not source_text else None,
            "precision": precision, "compile": compile or None, "device": str(self.device), **self.generator_recipe(),
        })

        def own_losses(latent: torch.Tensor) -> torch.Tensor:
            """Each image's latent terms: the generator's penalty and the fidelity to the init latent, shape (N,)."""
            terms = torch.stack([self.generator.latent_penalty(latent[k:k + 1]) for k in range(num_images)]).float()
            if fidelity and z_source is not None and not source_text:
                terms = terms + fidelity * (latent - z_source).float().pow(2).flatten(1).mean(1)
            return terms

        # 4. Optimise.
        losses: list[torch.Tensor] = []
        frames: list[np.ndarray] = []
        breakdowns: list[dict[str, torch.Tensor]] = []
        interrupted = False
        best_loss = torch.full((num_images,), float("inf"), device=self.device)
        best_z = z.detach().clone()
        started = time.perf_counter()
        bar = tqdm(range(1, steps + 1), desc=self.name.replace("_", "-"), disable=not progress, dynamic_ncols=True)
        with explain_out_of_memory(*memory_hint):
            try:
                for step in bar:
                    opt.zero_grad(set_to_none=True)
                    with autocast(self.device, precision):
                        images = render(z)
                    pixels = images.detach().requires_grad_(True)
                    per_image, parts = backward_over_cutout_batches(clip_loss, pixels, cutn_batches,
                                                                    partial(autocast, self.device, precision))
                    extra = own_losses(z)
                    ((images * pixels.grad).sum() + extra.sum()).backward()  # the cutouts' gradient, then the rest
                    per_image = per_image + extra.detach()
                    if grad_clip:
                        clip_per_image_(z.grad, grad_clip)
                    if best_step:  # on the device: no host sync per step
                        better = per_image < best_loss
                        best_loss = torch.where(better, per_image, best_loss)
                        best_z = torch.where(better.view(-1, *[1] * (z.ndim - 1)), z.detach(), best_z)
                    opt.step()
                    self.generator.project_(z)
                    losses.append(per_image)
                    breakdowns.append(parts)
                    if save_every and (step % save_every == 0 or step == steps):
                        frames.append(frame_of(images))
                        bar.set_postfix(loss=f"{per_image.mean().item():.4f}")
                        if callback is not None and callback(step, images.detach()):
                            break
            except KeyboardInterrupt:
                interrupted = True
            # 5. Decode the results, rank them if asked.
            with torch.no_grad():
                final = render(best_z if best_step and losses else z.detach())
        per_step = torch.stack(losses).cpu() if losses else torch.zeros(0, num_images)
        history = [{"step": i + 1, "loss": float(row.mean()), **{k: float(t) for k, t in parts.items()}}
                   for i, (row, parts) in enumerate(zip(per_step, breakdowns))]
        recipe.update(steps_done=len(history), interrupted=interrupted, seconds=round(time.perf_counter() - started, 2))
        own: list[dict[str, Any]] = [{"index": k + 1} if num_images > 1 else {} for k in range(num_images)]
        if best_step and history:
            for k, entry in enumerate(own):
                entry["best_at_step"] = int(per_step[:, k].argmin()) + 1
        order = ranking.best(final, prompt, own) if ranking is not None else list(range(num_images))
        if num_images == 1:  # one image: its entries are the run's
            recipe.update(own[0])
        return PipelineOutput([tensor_to_pil(final[k:k + 1]) for k in order], history,
                              frames + [frame_of(final[order[0]:order[0] + 1])], recipe, interrupted,
                              [own[k] for k in order] if num_images > 1 else [])

    def _region_starts(self, z_source: torch.Tensor, init: torch.Tensor, mask: torch.Tensor, candidates: int,
                       size: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
        """An edit's `candidates` starts for each of the N images of `z_source`, the init's latent (image k's
        at rows k, k + N, ...): the region as it is, then up to RECOLOURINGS recolourings, then random latents."""
        count, recolourings = z_source.shape[0], min(RECOLOURINGS, candidates - 1)
        recoloured = region_recolourings(init, mask, recolourings).split(CANDIDATE_CHUNK)  # encoded a chunk at a time
        turned = torch.cat([self.generator.encode(part) for part in recoloured])
        starts = [z_source, turned.repeat_interleave(count, dim=0)]
        if candidates - 1 - recolourings:
            starts.append(self.generator.random_latent(count * (candidates - 1 - recolourings), *size, generator))
        return torch.cat(starts)

    def _compiled_generator(self) -> Any:
        """The generator's decode through torch.compile, compiled once per pipeline."""
        if getattr(self, "_compiled_decode", None) is None:
            self._compiled_decode = torch.compile(self.generator)
        return self._compiled_decode

    def _check_settings(self, prompt: str, steps: int, lr: float, optimizer: str, cutn: int, cut_pow: float,
                        augment: str, init_image: Any, init_weight: float | None, mask: Any, source_text: str | None,
                        image_prompts: Sequence[str | ImagePrompt], save_every: int) -> dict[str, Any]:
        """Validate the settings before any work; return the parsed prompts."""
        check_count("--steps", steps, 1, MAX_STEPS)
        check_number("--lr", lr, above=0)
        if optimizer not in OPTIMIZERS:
            raise InvalidInputError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        check_cutouts(cutn, cut_pow)
        if augment not in AUGMENT_PRESETS:
            raise InvalidInputError(f"unknown augmentation preset {augment!r}; choose one of {', '.join(AUGMENT_PRESETS)}")
        if init_weight is not None:
            check_number("--init-weight", init_weight, low=0)
        check_count("--save-every", save_every, 0, MAX_STEPS)
        mode = edit_mode(init_image, mask, source_text)
        parsed_images = [self._image_prompt(p) for p in image_prompts]
        if mode == "directional":
            return {"target": directional_target(prompt)}
        prompts = parse_prompts(prompt) if (prompt and prompt.strip()) or not parsed_images else []
        check_some_weight([p.weight for p in prompts] + [p.weight for p in parsed_images])
        return {"prompts": prompts, "image_prompts": parsed_images}

    def _image_prompt(self, prompt: str | ImagePrompt) -> ImagePrompt:
        """An image prompt from `path[:weight[:stop]]`, loaded at the CLIP input size."""
        if isinstance(prompt, ImagePrompt):
            return prompt
        parsed = parse_prompt(prompt)
        image = load_image(parsed.text).to(self.device)
        return ImagePrompt(image, parsed.weight, parsed.stop, label=Path(parsed.text).name)


def build_parser(pipeline: type[LatentOptimizationPipeline], module: str) -> argparse.ArgumentParser:
    """The command-line options of a latent-optimisation pipeline (the generator's own come from the class)."""
    return latent_parser(module, pipeline.__name__, pipeline.add_model_arguments)


def run_cli_main(pipeline: type[LatentOptimizationPipeline], module: str, argv: list[str]) -> int:
    """The CLI of a latent-optimisation pipeline; returns the exit code."""
    args = build_parser(pipeline, module).parse_args(argv)
    check_count("--num-images", args.num_images, 1, MAX_IMAGES)
    paths, running = check_batch_outputs(args.output, args.num_images, args.keep_best, args.video)
    seed = resolve_seed(args.seed)
    pipe = pipeline.from_arguments(args, args.clip_model or [DEFAULT_CLIP])
    command = command_line(module, [*argv, *([] if args.seed is not None else ["--seed", str(seed)])])

    def save_progress(step: int, images: torch.Tensor) -> None:
        save_partial(images, running, command, step)

    result = pipe(args.prompt, size=args.size, steps=args.steps, seed=seed, lr=args.lr, optimizer=args.optimizer,
                  cutn=args.cutn, cut_pow=args.cut_pow, augment=args.augment, image_prompts=args.image_prompt,
                  init_image=args.init_image, init_weight=args.init_weight, mask=args.mask,
                  source_text=args.source_text, num_images=args.num_images, keep_best=args.keep_best,
                  judge_model=args.judge_model, cutn_batches=args.cutn_batches, grad_clip=args.grad_clip,
                  best_step=args.best_step, candidates=args.candidates, contrast=args.contrast,
                  precision=args.precision, compile=args.compile,
                  save_every=args.save_every, callback=save_progress)
    return finish_cli(result, paths, command, args.video, running=running)


if __name__ == "__main__":
    sys.exit(run_cli(lambda argv: run_cli_main(LatentOptimizationPipeline, "pipelines.latent_optimization", argv)))
