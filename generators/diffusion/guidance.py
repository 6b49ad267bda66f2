"""Classifier-style guidance of a diffusion step by any differentiable image loss (Disco Diffusion's cond_fn).

From x_t the model predicts x0; the loss sees `x_in = x0 * s + x_t * (1 - s)` with `s = sqrt(1 - alpha_bar_t)`,
decoded to an image; its gradient with respect to x_t shifts the predicted noise:
`eps' = eps - s * (-grad)`, which moves DDIM's and DDPM's next sample down the loss.

Backward guidance (Universal Guidance, Bansal et al. 2023) instead optimises the clean estimate x0 itself for a
few steps and re-derives the noise from it; a guidance schedule weighs either by how far the run has got.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from generators.diffusion.models import DiffusionModel, TextCondition

ImageLoss = Callable[[torch.Tensor], torch.Tensor]  # [0, 1] BCHW images -> scalar
# Backward guidance moves the clean estimate on a grid this many times coarser than the sample, upsampled
# bilinearly: at full resolution CLIP's gradient through the cutouts is pixel noise, and Adam's per-element steps
# give every pixel a full-size move, which left a coloured speckle over the edited region (docs/shapes_models.md).
BACKWARD_DOWNSCALE = 4
# The guidance weight at a run's progress p (0 at its first step, 1 at its last).
GUIDANCE_SCHEDULES: dict[str, Callable[[float], float]] = {
    "constant": lambda p: 1.0,
    "linear": lambda p: 1.0 - p,  # strongest while the layout forms, fading towards the details
    "cosine": lambda p: 0.5 * (1.0 + math.cos(math.pi * p)),
}


def clamp_rms(grad: torch.Tensor, max_rms: float) -> torch.Tensor:
    """Scale each sample's gradient down so its root-mean-square is at most `max_rms` (Disco's clamp_grad)."""
    rms = grad.square().mean(dim=tuple(range(1, grad.ndim)), keepdim=True).sqrt()
    return grad * (max_rms / rms).clamp(max=1.0)


def guidance_weight(schedule: str, progress: float) -> float:
    """The guidance scale's multiplier under `schedule` at `progress` through the run (0 first step, 1 last)."""
    return GUIDANCE_SCHEDULES[schedule](progress)


def guided_eps(model: DiffusionModel, x: torch.Tensor, t: int, condition: TextCondition | None, loss_fn: ImageLoss,
               clamp_grad: float = 0.0, weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(guided noise prediction, loss, whether the gradient was finite) for samples x at timestep t; `weight`
    scales the (clamped) gradient, for guidance schedules.

    A gradient with a NaN or infinity anywhere is dropped (the step goes unguided) rather than propagated;
    the check stays on the device, so it costs no host synchronisation.
    """
    sigma = (1 - model.alpha_bar(t)) ** 0.5
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        eps = model.predict_eps(x, t, condition)
        x0 = model.predict_x0(x, t, eps)
        loss = loss_fn(model.to_image(x0 * sigma + x * (1 - sigma)))
        grad = torch.autograd.grad(loss, x)[0]
    finite = torch.isfinite(grad).all()
    grad = torch.where(finite, grad, torch.zeros_like(grad))
    if clamp_grad > 0:
        grad = clamp_rms(grad, clamp_grad)
    return eps.detach() + (weight * sigma) * grad, loss.detach(), finite


def backward_eps(model: DiffusionModel, x: torch.Tensor, t: int, eps: torch.Tensor, loss_fn: ImageLoss, steps: int,
                 lr: float, weight: float = 1.0,
                 downscale: int = BACKWARD_DOWNSCALE) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward guidance (Universal Guidance): (noise re-derived from the optimised clean estimate, last loss).

    The model's clean estimate x0 of samples x at t (from their noise prediction `eps`) is moved by a delta that
    Adam at `lr` optimises for `steps` steps down `loss_fn`; `weight` scales the delta (guidance schedules). The
    delta lives on a grid `downscale` times coarser than the sample, upsampled bilinearly (1: every element). The
    noise that gives the moved x0 at x is `eps - sqrt(alpha_bar / (1 - alpha_bar)) * delta`. A step whose loss or
    gradient is not finite leaves the delta as it was.
    """
    alpha = model.alpha_bar(t)
    x0 = model.predict_x0(x, t, eps).detach()
    height, width = x0.shape[-2:]
    coarse = (max(1, -(-height // downscale)), max(1, -(-width // downscale)))
    delta = torch.zeros((*x0.shape[:-2], *coarse), device=x0.device, dtype=x0.dtype, requires_grad=True)

    def upsampled(values: torch.Tensor) -> torch.Tensor:
        return values if coarse == (height, width) else F.interpolate(values, size=(height, width), mode="bilinear",
                                                                      align_corners=False)

    optimizer = torch.optim.Adam([delta], lr=lr)
    loss = torch.zeros((), device=x.device)
    with torch.enable_grad():
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model.to_image(x0 + upsampled(delta)))
            grad = torch.autograd.grad(loss, delta)[0]
            delta.grad = torch.where(torch.isfinite(grad).all(), grad, torch.zeros_like(grad))
            optimizer.step()
    return eps - (weight * (alpha / (1 - alpha)) ** 0.5) * upsampled(delta.detach()), loss.detach()
