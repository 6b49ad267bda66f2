"""DiffusionCLIP fine-tuning: tune a copy of the UNet so that DDIM generation from fixed inverted latents
lowers an image loss (the directional CLIP loss), backpropagating through a few DDIM steps."""

from __future__ import annotations

import copy
from typing import Callable, Iterator, Sequence

import torch

from generators.diffusion.guidance import ImageLoss
from generators.diffusion.models import DiffusionModel, TextCondition
from generators.diffusion.sampling import ddim_sample

# Called after each optimiser step with (step, loss); returning True stops the tuning.
TuneCallback = Callable[[int, torch.Tensor], bool | None]


def finetune_unet(model: DiffusionModel, latents: torch.Tensor, timesteps: Sequence[int], end_alpha: float,
                  condition: TextCondition | None, loss_fn: ImageLoss, steps: Iterator[int] | Sequence[int],
                  lr: float, callback: TuneCallback | None = None) -> tuple[DiffusionModel, bool]:
    """(a model whose UNet is a tuned copy of `model`'s, whether Ctrl-C stopped the tuning early).

    Each item of `steps` generates images from `latents` with DDIM over descending `timesteps` (ending at
    `end_alpha`) using the UNet being tuned, and takes one Adam step down `loss_fn` of them; a step whose
    gradient is not finite leaves the weights' gradient at zero. Gradient checkpointing keeps the memory of the
    few UNet passes small. The returned model is frozen; after Ctrl-C it holds the weights reached so far.
    """
    unet = copy.deepcopy(model.unet)
    tuned = model.with_unet(unet)  # freezes the copy: unfreeze it after
    parameters = list(unet.requires_grad_(True).parameters())
    unet.enable_gradient_checkpointing()
    optimizer = torch.optim.Adam(parameters, lr=lr)
    interrupted = False
    try:
        for step in steps:
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(tuned.to_image(ddim_sample(tuned, latents, timesteps, condition, end_alpha)))
            loss.backward()
            finite = torch.stack([torch.isfinite(p.grad).all() for p in parameters if p.grad is not None]).all()
            for p in parameters:
                if p.grad is not None:
                    p.grad = torch.where(finite, p.grad, torch.zeros_like(p.grad))
            optimizer.step()
            if callback is not None and callback(step, loss.detach()):
                break
    except KeyboardInterrupt:
        interrupted = True
    finally:
        unet.disable_gradient_checkpointing()
        unet.eval().requires_grad_(False)
    return tuned, interrupted
