"""Codebooks of taming's two quantizers, and straight-through nearest-code quantisation of a latent."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from generators.vqgan.autograd import replace_grad


class VectorQuantizer(nn.Module):
    """Taming's `VectorQuantizer2` parameters: a codebook at `embedding.weight`."""

    def __init__(self, n_embed: int, embed_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_embed, embed_dim)

    @property
    def codebook(self) -> torch.Tensor:
        """The (n_embed, embed_dim) code vectors."""
        return self.embedding.weight


class GumbelQuantize(nn.Module):
    """Taming's `GumbelQuantize` parameters: logits projection `proj` and codebook `embed.weight`."""

    def __init__(self, num_hiddens: int, embed_dim: int, n_embed: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(num_hiddens, n_embed, kernel_size=1)
        self.embed = nn.Embedding(n_embed, embed_dim)

    @property
    def codebook(self) -> torch.Tensor:
        """The (n_embed, embed_dim) code vectors."""
        return self.embed.weight


def nearest_codes(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index (B, H, W) of the codebook vector nearest to each position of latent `z` (B, C, H, W), in float32."""
    with torch.no_grad(), torch.autocast(z.device.type, enabled=False):
        flat = z.detach().movedim(1, -1).reshape(-1, z.shape[1]).float()
        codes = codebook.detach().float()
        distances = codes.square().sum(1) - 2 * flat @ codes.T
        return distances.argmin(1).view(z.shape[0], *z.shape[2:])


def quantize_straight_through(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Replace each position of `z` by its nearest code (same dtype and memory format); the gradient passes to `z`."""
    codes = F.embedding(nearest_codes(z, codebook), codebook).movedim(-1, 1)
    return replace_grad(torch.empty_like(z).copy_(codes), z)
