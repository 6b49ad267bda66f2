"""Distances between embeddings and image regularisers; small pure functions on tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def spherical_dist_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared great-circle distance `2 * arcsin(|x_n - y_n| / 2) ** 2` over the last dim, broadcasting."""
    x, y = F.normalize(x, dim=-1), F.normalize(y, dim=-1)
    chord = (x - y).norm(dim=-1).div(2).clamp(max=1.0)
    return chord.arcsin().pow(2).mul(2)


def cosine_dist_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """`1 - cos(x, y)` over the last dim, broadcasting."""
    x, y = torch.broadcast_tensors(x, y)
    return 1 - F.cosine_similarity(x, y, dim=-1)


DISTANCES = {"spherical": spherical_dist_loss, "cosine": cosine_dist_loss}


def directional_loss(src_image_emb: torch.Tensor, gen_image_emb: torch.Tensor,
                     src_text_emb: torch.Tensor, tgt_text_emb: torch.Tensor) -> torch.Tensor:
    """`1 - cos(gen_image - src_image, tgt_text - src_text)` per row (StyleGAN-NADA / DiffusionCLIP)."""
    image_direction = gen_image_emb - src_image_emb
    text_direction = tgt_text_emb - src_text_emb
    return cosine_dist_loss(image_direction, text_direction)


def tv_loss(images: torch.Tensor) -> torch.Tensor:
    """Total variation per image: mean of squared differences between neighbouring pixels, shape (B,)."""
    padded = F.pad(images, (0, 1, 0, 1), mode="replicate")
    dx = padded[..., :-1, 1:] - padded[..., :-1, :-1]
    dy = padded[..., 1:, :-1] - padded[..., :-1, :-1]
    return (dx.pow(2) + dy.pow(2)).mean(dim=(1, 2, 3))


def range_loss(images: torch.Tensor, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    """Penalty for values outside [low, high] per image: mean squared overshoot, shape (B,)."""
    return (images - images.clamp(low, high)).pow(2).mean(dim=(1, 2, 3))
