"""The two gradient tricks of VQGAN-CLIP: straight-through replacement and a range clamp that keeps inward gradients."""

from __future__ import annotations

from typing import Any

import torch


class _ReplaceGrad(torch.autograd.Function):
    """Forward returns the first tensor; backward hands its gradient, unchanged, to the second."""

    @staticmethod
    def forward(ctx: Any, forward_value: torch.Tensor, backward_target: torch.Tensor) -> torch.Tensor:
        """Pass `forward_value` through."""
        return forward_value.view_as(forward_value)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, torch.Tensor]:
        """Give the whole gradient to `backward_target`."""
        return None, grad


class _ClampWithGrad(torch.autograd.Function):
    """Clamp whose backward zeroes the gradient only where a descent step would push further out of range."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, low: float, high: float) -> torch.Tensor:
        """Clamp `x`, remembering it for the backward pass."""
        ctx.save_for_backward(x)
        ctx.low, ctx.high = low, high
        return x.clamp(low, high)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        """Keep the gradient where it is inside range or would move `x` back towards it."""
        (x,) = ctx.saved_tensors
        overshoot = x - x.clamp(ctx.low, ctx.high)
        return grad * (grad * overshoot >= 0), None, None


def replace_grad(forward_value: torch.Tensor, backward_target: torch.Tensor) -> torch.Tensor:
    """Value of `forward_value`, gradient routed unchanged to `backward_target` (same shape)."""
    return _ReplaceGrad.apply(forward_value, backward_target)


def clamp_with_grad(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """`x.clamp(low, high)`, keeping gradients that point back into range (descent moves x inward)."""
    return _ClampWithGrad.apply(x, low, high)
