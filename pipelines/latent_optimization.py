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
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from generators.base import LatentGenerator
from generators.registry import GENERATORS, load_generator
from guidance.clip_loss import CLIPLoss, DirectionalCLIPLoss, ImagePrompt
from guidance.clip_models import CLIPEncoder, load_clip_ensemble
from guidance.cutouts import AUGMENT_PRESETS, MakeCutouts
from guidance.errors import InvalidInputError
from guidance.images import load_image, png_output_path, tensor_to_pil
from guidance.memory import check_memory, estimate_run_bytes
from guidance.prompts import parse_prompt, parse_prompts
from guidance.runtime import (autocast, check_precision, explain_out_of_memory, pick_device, prepare_device,
                              resolve_seed)
from guidance.validation import MAX_STEPS, check_count, check_number, check_some_weight
from pipelines.common import (CLIParser, DEFAULT_CLIP, PipelineOutput, StepCallback, add_guidance_arguments,
                              add_runtime_arguments, call_defaults, check_cli_outputs, check_cutouts, clean_recipe,
                              command_line, directional_target, edit_mode, finish_cli, frame_of, load_edit_inputs,
                              parse_size, round_size, run_cli, save_partial)

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "radam": torch.optim.RAdam, "sgd": torch.optim.SGD,
              "nesterov": partial(torch.optim.SGD, momentum=0.9, nesterov=True)}  # ReNO's optimiser


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
        parser.add_argument("--generator", choices=sorted(GENERATORS), default="pixels", help="generator kind")
        parser.add_argument("--model", default="fft", help="the generator's model (name, file or parameterization)")

    @classmethod
    def from_arguments(cls, args: argparse.Namespace, clip_models: Sequence[str]) -> "LatentOptimizationPipeline":
        """The pipeline the parsed CLI options ask for."""
        return cls.from_pretrained(args.generator, args.model, clip_models, args.device)

    @property
    def size_factor(self) -> int:
        """Output sides are multiples of this."""
        return self.generator.factor

    def __call__(self, prompt: str = "", *, size: str | int | tuple[int, int] | None = None, steps: int = 300,
                 seed: int | None = None, lr: float | None = None, optimizer: str = "adam", cutn: int = 32,
                 cut_pow: float = 1.0, augment: str = "geometric", image_prompts: Sequence[str | ImagePrompt] = (),
                 init_image: str | Path | torch.Tensor | None = None, init_weight: float | None = None,
                 mask: str | Path | torch.Tensor | None = None, source_text: str | None = None,
                 grad_clip: float | None = None, keep_best: bool = False,
                 precision: str = "fp32", save_every: int = 50, callback: StepCallback | None = None,
                 progress: bool = True) -> PipelineOutput:
        """Generate (or edit) one image; returns it with its history. Ctrl-C ends early and keeps the last image.

        `grad_clip` clips the latent's gradient norm; `keep_best` returns the image of the lowest loss, not the last.
        The generator's `latent_penalty` joins the loss."""
        # 1. Check the settings, before any work.
        check_precision(precision, self.device)
        lr = self.default_lr if lr is None else lr
        settings = self._check_settings(prompt, steps, lr, optimizer, cutn, cut_pow, augment, init_image, init_weight,
                                        mask, source_text, image_prompts, save_every)
        if grad_clip is not None:
            check_number("--grad-clip", grad_clip, above=0)
        seed = resolve_seed(seed)
        prepare_device(self.device)
        width, height = round_size(parse_size(self.default_size if size is None else size), self.size_factor,
                                   self.model_name)
        clip_size = max(m.image_size for m, _ in self.clip_models)
        check_memory(estimate_run_bytes(width, height, cutn, clip_size, generator=self.memory_profile), self.device,
                     f"{self.name} at {width}x{height} with {cutn} cutouts", "--cutn or --size")
        torch.manual_seed(seed)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        # 2. Prepare the inputs and the loss (targets are embedded once, here).
        init, mask_tensor = load_edit_inputs(init_image, mask, (width, height), self.device)
        if init is not None and init.shape[0] != 1:
            raise InvalidInputError(f"{self.name} edits one image at a time, got {init.shape[0]}")
        fidelity = init_weight if init_weight is not None else (1.0 if source_text else 0.0)
        cutouts = MakeCutouts(clip_size, cutn=cutn, cut_pow=cut_pow, augment=augment)
        if source_text:
            clip_loss: torch.nn.Module = DirectionalCLIPLoss(self.clip_models, init, source_text, settings["target"],
                                                             cutouts=cutouts, l1_weight=fidelity)
        else:
            clip_loss = CLIPLoss(self.clip_models, settings["prompts"], settings["image_prompts"], cutouts=cutouts)
        # 3. Prepare the latent.
        with torch.no_grad():
            z_init = (self.generator.encode(init) if init is not None
                      else self.generator.random_latent(1, height, width, generator))
        z = z_init.clone().requires_grad_(True)
        opt = OPTIMIZERS[optimizer]([z], lr=lr)
        recipe = clean_recipe({
            "pipeline": self.name, "prompt": prompt, "size": f"{width}x{height}", "steps": steps, "seed": seed,
            "lr": lr, "optimizer": optimizer, "cutn": cutn, "cut_pow": cut_pow, "augment": augment,
            "clip_models": [f"{m.name}:{w:g}" for m, w in self.clip_models], self.model_key: self.model_name,
            "image_prompts": [p if isinstance(p, str) else p.label for p in image_prompts],
            "init_image": str(init_image) if isinstance(init_image, (str, Path)) else None,
            "init_weight": fidelity if init is not None else None,
            "mask": str(mask) if isinstance(mask, (str, Path)) else None, "source_text": source_text,
            "grad_clip": grad_clip, "keep_best": keep_best or None, "precision": precision, "device": str(self.device),
        })

        def render(latent: torch.Tensor) -> torch.Tensor:
            images = self.generator.decode(latent).float()
            return images if mask_tensor is None else images * mask_tensor + init * (1 - mask_tensor)

        # 4. Optimise.
        losses: list[torch.Tensor] = []
        frames: list[np.ndarray] = []
        breakdowns: list[dict[str, torch.Tensor]] = []
        interrupted = False
        best_loss, best_z = torch.tensor(float("inf"), device=self.device), z.detach().clone()
        started = time.perf_counter()
        what = f"{self.name} at {width}x{height} with {cutn} cutouts"
        factor = self.size_factor
        smaller = f"{width * 3 // 4 // factor * factor}x{height * 3 // 4 // factor * factor}"
        bar = tqdm(range(1, steps + 1), desc=self.name.replace("_", "-"), disable=not progress, dynamic_ncols=True)
        with explain_out_of_memory(what, f"try --size {smaller}, --cutn {max(1, cutn // 2)} or --precision bf16"):
            try:
                for step in bar:
                    opt.zero_grad(set_to_none=True)
                    with autocast(self.device, precision):
                        images = render(z)
                        loss = clip_loss(images)
                        if fidelity and init is not None and not source_text:
                            loss = loss + fidelity * F.mse_loss(z, z_init)
                        loss = loss + self.generator.latent_penalty(z)
                    loss.backward()
                    if grad_clip:
                        torch.nn.utils.clip_grad_norm_([z], grad_clip)
                    if keep_best:  # on the device: no host sync per step
                        better = loss.detach() < best_loss
                        best_loss = torch.where(better, loss.detach(), best_loss)
                        best_z = torch.where(better, z.detach(), best_z)
                    opt.step()
                    self.generator.project_(z)
                    losses.append(loss.detach())
                    breakdowns.append(clip_loss.last_losses)
                    if save_every and (step % save_every == 0 or step == steps):
                        frames.append(frame_of(images))
                        bar.set_postfix(loss=f"{loss.item():.4f}")
                        if callback is not None and callback(step, images.detach()):
                            break
            except KeyboardInterrupt:
                interrupted = True
            # 5. Decode the result.
            with torch.no_grad():
                final = render(best_z if keep_best and losses else z.detach())
        history = [{"step": i + 1, "loss": float(v), **{k: float(t) for k, t in parts.items()}}
                   for i, (v, parts) in enumerate(zip(torch.stack(losses).tolist() if losses else [], breakdowns))]
        recipe.update(steps_done=len(history), interrupted=interrupted, seconds=round(time.perf_counter() - started, 2))
        if keep_best and history:
            recipe["best_step"] = min(history, key=lambda entry: entry["loss"])["step"]
        return PipelineOutput([tensor_to_pil(final)], history, frames + [frame_of(final)], recipe, interrupted)

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
    defaults = call_defaults(pipeline.__call__)
    summary = (sys.modules[pipeline.__module__].__doc__ or pipeline.__doc__ or "").split("\n\n")[0]
    parser = CLIParser(prog=f"python -m {module}", description=summary)
    parser.add_argument("prompt", nargs="?", default="",
                        help="text prompt; 'text:weight:stop' items joined by '|' (negative weights push away)")
    size = pipeline.default_size
    parser.add_argument("--size", default=f"{size[0]}x{size[1]}",
                        help="WIDTH or WIDTHxHEIGHT, rounded down to the generator's factor")
    parser.add_argument("--steps", type=int, default=defaults["steps"], help=f"optimisation steps, 1 to {MAX_STEPS}")
    parser.add_argument("--lr", type=float, default=pipeline.default_lr, help="learning rate, a finite number > 0")
    parser.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default=defaults["optimizer"],
                        help="optimiser of the latent")
    add_guidance_arguments(parser, defaults, "step")
    pipeline.add_model_arguments(parser)
    parser.add_argument("--image-prompt", action="append", default=[], metavar="PATH[:WEIGHT[:STOP]]",
                        help="an image as a target like a text prompt; repeatable")
    parser.add_argument("--init-image", default=None, help="start from this image (and edit it)")
    parser.add_argument("--init-weight", type=float, default=None,
                        help="fidelity to the init image (default 0; 1 for --source-text edits)")
    parser.add_argument("--mask", default=None, help="edit only the white region of this mask (same size as the output)")
    parser.add_argument("--source-text", default=None, help="describe the init image; the prompt is the target")
    add_runtime_arguments(parser)
    return parser


def run_cli_main(pipeline: type[LatentOptimizationPipeline], module: str, argv: list[str]) -> int:
    """The CLI of a latent-optimisation pipeline; returns the exit code."""
    args = build_parser(pipeline, module).parse_args(argv)
    output = png_output_path(args.output)
    check_cli_outputs([output], args.video)
    seed = resolve_seed(args.seed)
    pipe = pipeline.from_arguments(args, args.clip_model or [DEFAULT_CLIP])
    command = command_line(module, [*argv, *([] if args.seed is not None else ["--seed", str(seed)])])

    def save_progress(step: int, images: torch.Tensor) -> None:
        save_partial(images, [output], command, step)

    result = pipe(args.prompt, size=args.size, steps=args.steps, seed=seed, lr=args.lr, optimizer=args.optimizer,
                  cutn=args.cutn, cut_pow=args.cut_pow, augment=args.augment, image_prompts=args.image_prompt,
                  init_image=args.init_image, init_weight=args.init_weight, mask=args.mask,
                  source_text=args.source_text, precision=args.precision, save_every=args.save_every,
                  callback=save_progress)
    return finish_cli(result, [output], command, args.video)


if __name__ == "__main__":
    sys.exit(run_cli(lambda argv: run_cli_main(LatentOptimizationPipeline, "pipelines.latent_optimization", argv)))
