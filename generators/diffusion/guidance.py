"""Classifier-style guidance of a diffusion step by any differentiable image loss (Disco Diffusion's cond_fn).

From x_t the model predicts x0; the loss sees `x_in = x0 * s + x_t * (1 - s)` with `s = sqrt(1 - alpha_bar_t)`,
decoded to an image; its gradient with respect to x_t shifts the predicted noise:
`eps' = eps - s * (-grad)`, which moves DDIM's and DDPM's next sample down the loss.
"""

from __future__ import annotations

from typing import Callable

import torch

from generators.diffusion.models import DiffusionModel, TextCondition

ImageLoss = Callable[[torch.Tensor], torch.Tensor]  # [0, 1] BCHW images -> scalar


def clamp_rms(grad: torch.Tensor, max_rms: float) -> torch.Tensor:
    """Scale each sample's gradient down so its root-mean-square is at most `max_rms` (Disco's clamp_grad)."""
    rms = grad.square().mean(dim=tuple(range(1, grad.ndim)), keepdim=True).sqrt()
    return grad * (max_rms / rms).clamp(max=1.0)


def guided_eps(model: DiffusionModel, x: torch.Tensor, t: int, condition: TextCondition | None, loss_fn: ImageLoss,
               clamp_grad: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(guided noise prediction, loss, whether the gradient was finite) for samples x at timestep t.

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
    return eps.detach() + sigma * grad, loss.detach(), finite
