"""VQGAN-CLIP: optimise a VQGAN latent until the decoded image matches text and image prompts under CLIP.

Python:  VQGANCLIPPipeline.from_pretrained()("a rocket on a launchpad", steps=300).images[0]
CLI:     python -m pipelines.vqgan_clip "a rocket on a launchpad" -o rocket.png

Editing: `init_image` + `mask` changes only the white part of the mask; `init_image` + `source_text`
moves the image along the CLIP direction from the source text to the prompt (DiffusionCLIP-style loss).
"""

from __future__ import annotations

import argparse
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

from generators.vqgan import VQGAN, load_vqgan
from guidance.clip_loss import CLIPLoss, DirectionalCLIPLoss, ImagePrompt
from guidance.clip_models import CLIPEncoder, load_clip_ensemble
from guidance.cutouts import AUGMENT_PRESETS, MakeCutouts
from guidance.errors import InvalidInputError
from guidance.images import load_image, png_output_path, save_png, tensor_to_pil
from guidance.prompts import parse_prompt, parse_prompts
from guidance.runtime import autocast, check_precision, explain_out_of_memory, pick_device, prepare_device, resolve_seed
from pipelines.common import (StepCallback, add_runtime_arguments, as_mask, clean_recipe, command_line, frame_of,
                              load_init_images, parse_size, round_size, run_cli, write_video)

DEFAULT_CLIP = "ViT-B-32:openai"
DEFAULT_VQGAN = "vqgan_imagenet_f16_16384"
DEFAULT_SIZE = (320, 320)  # fits an 8 GB GPU with ViT-B/32 and 32 cutouts in fp32
OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "radam": torch.optim.RAdam, "sgd": torch.optim.SGD}


@dataclass
class VQGANCLIPOutput:
    """The result of a run: final images, the loss history, progress frames and the recipe."""

    images: list[Image.Image]
    history: list[dict[str, float]]
    frames: list[np.ndarray] = field(default_factory=list)
    recipe: dict[str, Any] = field(default_factory=dict)
    interrupted: bool = False


class VQGANCLIPPipeline:
    """A VQGAN and a CLIP ensemble, loaded once; each call optimises a fresh latent."""

    def __init__(self, vqgan: VQGAN, clip_models: Sequence[tuple[CLIPEncoder, float]], vqgan_name: str = "vqgan"):
        self.vqgan = vqgan.eval().requires_grad_(False)
        self.clip_models = list(clip_models)
        self.vqgan_name = vqgan_name
        self.device = next(vqgan.parameters()).device

    @classmethod
    def from_pretrained(cls, vqgan: str = DEFAULT_VQGAN, clip_models: Sequence[str] = (DEFAULT_CLIP,),
                        device: str | torch.device | None = None, vqgan_config: str | None = None,
                        allow_pickle: bool = False) -> "VQGANCLIPPipeline":
        """Load the VQGAN (name, path or hub repo) and CLIP models (`NAME[:PRETRAINED][:WEIGHT]` specs)."""
        device = pick_device(device) if not isinstance(device, torch.device) else device
        members = load_clip_ensemble(clip_models, device)
        model = load_vqgan(vqgan, config=vqgan_config, device=device, allow_pickle=allow_pickle)
        return cls(model, members, vqgan_name=str(vqgan))

    def __call__(self, prompt: str = "", *, size: str | int | tuple[int, int] = DEFAULT_SIZE, steps: int = 300,
                 seed: int | None = None, lr: float = 0.1, optimizer: str = "adam", cutn: int = 32,
                 cut_pow: float = 1.0, augment: str = "default", image_prompts: Sequence[str | ImagePrompt] = (),
                 init_image: str | Path | torch.Tensor | None = None, init_weight: float | None = None,
                 mask: str | Path | torch.Tensor | None = None, source_text: str | None = None,
                 precision: str = "fp32", save_every: int = 50, callback: StepCallback | None = None,
                 progress: bool = True) -> VQGANCLIPOutput:
        """Generate (or edit) one image; returns it with its history. Ctrl-C ends early and keeps the last image."""
        check_precision(precision, self.device)
        settings = self._check_settings(prompt, steps, lr, optimizer, cutn, cut_pow, augment, init_image, mask,
                                        source_text, image_prompts)
        seed = resolve_seed(seed)
        prepare_device(self.device)
        width, height = round_size(parse_size(size), self.vqgan.factor, self.vqgan_name)
        torch.manual_seed(seed)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        init = load_init_images(init_image, (width, height), self.device)
        if init is not None and init.shape[0] != 1:
            raise InvalidInputError(f"VQGAN-CLIP edits one image at a time, got {init.shape[0]}")
        mask_tensor = as_mask(mask, (width, height), self.device)
        fidelity = init_weight if init_weight is not None else (1.0 if source_text else 0.0)
        cutouts = MakeCutouts(max(m.image_size for m, _ in self.clip_models), cutn=cutn, cut_pow=cut_pow,
                              augment=augment)
        if source_text:
            clip_loss: torch.nn.Module = DirectionalCLIPLoss(self.clip_models, init, source_text, settings["target"],
                                                             cutouts=cutouts, l1_weight=fidelity)
        else:
            clip_loss = CLIPLoss(self.clip_models, settings["prompts"], settings["image_prompts"], cutouts=cutouts)
        with torch.no_grad():
            z_init = self.vqgan.encode(init) if init is not None else self.vqgan.random_latent(1, height, width, generator)
        z = z_init.clone().requires_grad_(True)
        opt = OPTIMIZERS[optimizer]([z], lr=lr)
        recipe = clean_recipe({
            "pipeline": "vqgan_clip", "prompt": prompt, "size": f"{width}x{height}", "steps": steps, "seed": seed,
            "lr": lr, "optimizer": optimizer, "cutn": cutn, "cut_pow": cut_pow, "augment": augment,
            "clip_models": [f"{m.name}:{w:g}" for m, w in self.clip_models], "vqgan": self.vqgan_name,
            "image_prompts": [p if isinstance(p, str) else p.label for p in image_prompts],
            "init_image": str(init_image) if isinstance(init_image, (str, Path)) else None,
            "init_weight": fidelity if init is not None else None,
            "mask": str(mask) if isinstance(mask, (str, Path)) else None, "source_text": source_text,
            "precision": precision, "device": str(self.device),
        })

        def render(latent: torch.Tensor) -> torch.Tensor:
            images = self.vqgan.decode(latent).float()
            return images if mask_tensor is None else images * mask_tensor + init * (1 - mask_tensor)

        losses: list[torch.Tensor] = []
        frames: list[np.ndarray] = []
        breakdowns: list[dict[str, torch.Tensor]] = []
        interrupted = False
        started = time.perf_counter()
        what = f"VQGAN-CLIP at {width}x{height} with {cutn} cutouts"
        smaller = f"{width * 3 // 4 // self.vqgan.factor * self.vqgan.factor}x{height * 3 // 4 // self.vqgan.factor * self.vqgan.factor}"
        bar = tqdm(range(1, steps + 1), desc="vqgan-clip", disable=not progress, dynamic_ncols=True)
        with explain_out_of_memory(what, f"try --size {smaller}, --cutn {max(1, cutn // 2)} or --precision bf16"):
            try:
                for step in bar:
                    opt.zero_grad(set_to_none=True)
                    with autocast(self.device, precision):
                        images = render(z)
                        loss = clip_loss(images)
                        if fidelity and init is not None and not source_text:
                            loss = loss + fidelity * F.mse_loss(z, z_init)
                    loss.backward()
                    opt.step()
                    self.vqgan.clamp_latent_(z)
                    losses.append(loss.detach())
                    breakdowns.append(clip_loss.last_losses)
                    if save_every and (step % save_every == 0 or step == steps):
                        frames.append(frame_of(images))
                        bar.set_postfix(loss=f"{loss.item():.4f}")
                        if callback is not None and callback(step, images.detach()):
                            break
            except KeyboardInterrupt:
                interrupted = True
            with torch.no_grad():
                final = render(z.detach())
        history = [{"step": i + 1, "loss": float(v), **{k: float(t) for k, t in parts.items()}}
                   for i, (v, parts) in enumerate(zip(torch.stack(losses).tolist() if losses else [], breakdowns))]
        recipe.update(steps_done=len(history), interrupted=interrupted, seconds=round(time.perf_counter() - started, 2))
        return VQGANCLIPOutput([tensor_to_pil(final)], history, frames + [frame_of(final)], recipe, interrupted)

    def _check_settings(self, prompt: str, steps: int, lr: float, optimizer: str, cutn: int, cut_pow: float,
                        augment: str, init_image: Any, mask: Any, source_text: str | None,
                        image_prompts: Sequence[str | ImagePrompt]) -> dict[str, Any]:
        """Validate the settings before any work; return the parsed prompts."""
        if steps < 1:
            raise InvalidInputError(f"steps must be at least 1, got {steps}")
        if not lr > 0:
            raise InvalidInputError(f"learning rate must be positive, got {lr}")
        if optimizer not in OPTIMIZERS:
            raise InvalidInputError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if cutn < 1:
            raise InvalidInputError(f"cutn must be at least 1, got {cutn}")
        if cut_pow <= 0:
            raise InvalidInputError(f"cut_pow must be positive, got {cut_pow}")
        if augment not in AUGMENT_PRESETS:
            raise InvalidInputError(f"unknown augmentation preset {augment!r}; choose one of {', '.join(AUGMENT_PRESETS)}")
        if (mask is not None or source_text) and init_image is None:
            raise InvalidInputError("--mask and --source-text edit an image; give it with --init-image")
        if mask is not None and source_text:
            raise InvalidInputError("choose one way to edit: --mask (change a region) or --source-text (directional)")
        parsed_images = [self._image_prompt(p) for p in image_prompts]
        if source_text:
            target = parse_prompt(prompt).text if prompt and prompt.strip() else ""
            if not target or "|" in prompt:
                raise InvalidInputError("a directional edit needs exactly one target text, e.g. 'a photo of a dog'")
            return {"target": target}
        prompts = parse_prompts(prompt) if (prompt and prompt.strip()) or not parsed_images else []
        return {"prompts": prompts, "image_prompts": parsed_images}

    def _image_prompt(self, prompt: str | ImagePrompt) -> ImagePrompt:
        """An image prompt from `path[:weight[:stop]]`, loaded at the CLIP input size."""
        if isinstance(prompt, ImagePrompt):
            return prompt
        parsed = parse_prompt(prompt)
        image = load_image(parsed.text).to(self.device)
        return ImagePrompt(image, parsed.weight, parsed.stop, label=Path(parsed.text).name)


def build_parser() -> argparse.ArgumentParser:
    """The command-line options."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.vqgan_clip", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("prompt", nargs="?", default="",
                        help="text prompt; 'text:weight:stop' items joined by '|' (negative weights push away)")
    parser.add_argument("--size", default=f"{DEFAULT_SIZE[0]}x{DEFAULT_SIZE[1]}", help="WIDTH or WIDTHxHEIGHT")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=0.1, help="learning rate")
    parser.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="adam")
    parser.add_argument("--cutn", type=int, default=32, help="cutouts per step")
    parser.add_argument("--cut-pow", type=float, default=1.0, help="cutout size power (higher: smaller cutouts)")
    parser.add_argument("--augment", choices=AUGMENT_PRESETS, default="default", help="cutout augmentation preset")
    parser.add_argument("--clip-model", action="append", default=None, metavar="NAME[:PRETRAINED][:WEIGHT]",
                        help=f"CLIP model, repeatable for an ensemble (default: {DEFAULT_CLIP})")
    parser.add_argument("--vqgan", default=DEFAULT_VQGAN, help="VQGAN name, checkpoint file, folder or hf:// repo")
    parser.add_argument("--vqgan-config", default=None, help="taming .yaml config for a local VQGAN checkpoint")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="allow full unpickling of checkpoints (runs code from the file; only for files you trust)")
    parser.add_argument("--image-prompt", action="append", default=[], metavar="PATH[:WEIGHT[:STOP]]")
    parser.add_argument("--init-image", default=None, help="start from this image (and edit it)")
    parser.add_argument("--init-weight", type=float, default=None,
                        help="fidelity to the init image (default 0; 1 for --source-text edits)")
    parser.add_argument("--mask", default=None, help="edit only the white region of this mask (same size as the output)")
    parser.add_argument("--source-text", default=None, help="describe the init image; the prompt is the target")
    add_runtime_arguments(parser)
    return parser


def main(argv: list[str]) -> int:
    """Run the CLI; returns the exit code."""
    args = build_parser().parse_args(argv)
    output = png_output_path(args.output)
    seed = resolve_seed(args.seed)
    pipe = VQGANCLIPPipeline.from_pretrained(args.vqgan, args.clip_model or [DEFAULT_CLIP], args.device,
                                             args.vqgan_config, args.allow_pickle)
    command = command_line("pipelines.vqgan_clip", [*argv, *([] if args.seed is not None else ["--seed", str(seed)])])

    def save_progress(step: int, images: torch.Tensor) -> None:
        save_png(images, output, {"command": command, "step": step, "partial": True})

    result = pipe(args.prompt, size=args.size, steps=args.steps, seed=seed, lr=args.lr, optimizer=args.optimizer,
                  cutn=args.cutn, cut_pow=args.cut_pow, augment=args.augment, image_prompts=args.image_prompt,
                  init_image=args.init_image, init_weight=args.init_weight, mask=args.mask,
                  source_text=args.source_text, precision=args.precision, save_every=args.save_every,
                  callback=save_progress)
    save_png(result.images[0], output, {**result.recipe, "command": command})
    if args.video:
        write_video(result.frames, args.video)
    state = "interrupted after" if result.interrupted else "done in"
    print(f"{state} {result.recipe['steps_done']} steps ({result.recipe['seconds']} s): {output}", file=sys.stderr)
    return 130 if result.interrupted else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
