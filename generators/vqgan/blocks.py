"""Encoder and decoder of taming-transformers' VQGAN, with taming's module names so its weights load as-is.

Same architecture as `taming.modules.diffusionmodules.model` (no timestep embedding), written for speed:
attention uses `scaled_dot_product_attention`, and every op works under `torch.autocast` and `channels_last`."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def normalize(channels: int) -> nn.GroupNorm:
    """Taming's normalisation: GroupNorm with 32 groups and eps 1e-6."""
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


def conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    """A 3x3 same-size convolution."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)


def conv1x1(in_channels: int, out_channels: int) -> nn.Conv2d:
    """A 1x1 convolution."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=1)


class ResnetBlock(nn.Module):
    """Two norm-swish-conv stages plus a (1x1-projected when the width changes) skip connection."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = normalize(in_channels)
        self.conv1 = conv3x3(in_channels, out_channels)
        self.norm2 = normalize(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv3x3(out_channels, out_channels)
        if in_channels != out_channels:
            self.nin_shortcut = conv1x1(in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual update of `x`."""
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        skip = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return skip + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels, with 1x1-conv projections."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = normalize(channels)
        self.q = conv1x1(channels, channels)
        self.k = conv1x1(channels, channels)
        self.v = conv1x1(channels, channels)
        self.proj_out = conv1x1(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual attention update of `x`."""
        batch, channels, height, width = x.shape
        h = self.norm(x)
        q, k, v = (proj(h).flatten(2).transpose(1, 2).unsqueeze(1) for proj in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.squeeze(1).transpose(1, 2).reshape(batch, channels, height, width)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Halve the resolution: pad right/bottom by one then a stride-2 3x3 conv, or 2x2 average pooling."""

    def __init__(self, channels: int, with_conv: bool) -> None:
        super().__init__()
        if with_conv:
            self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Downsampled `x`."""
        if hasattr(self, "conv"):
            return self.conv(F.pad(x, (0, 1, 0, 1)))
        return F.avg_pool2d(x, kernel_size=2, stride=2)


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour interpolation, optionally followed by a 3x3 conv."""

    def __init__(self, channels: int, with_conv: bool) -> None:
        super().__init__()
        if with_conv:
            self.conv = conv3x3(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Upsampled `x`."""
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if hasattr(self, "conv") else x


class Level(nn.Module):
    """One resolution level: res blocks, attention after each block where configured, then a resampler."""

    def __init__(self, widths: Sequence[int], attention: bool, dropout: float) -> None:
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(w_in, w_out, dropout) for w_in, w_out in zip(widths, widths[1:]))
        self.attn = nn.ModuleList(AttnBlock(w) for w in widths[1:]) if attention else nn.ModuleList()

    def run_blocks(self, h: torch.Tensor) -> torch.Tensor:
        """Apply the level's res blocks (and attention) without the resampler."""
        for index, block in enumerate(self.block):
            h = block(h)
            if self.attn:
                h = self.attn[index](h)
        return h


class MidBlock(nn.Module):
    """The bottleneck: res block, attention, res block."""

    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Bottleneck update of `x`."""
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    """Image (in [-1, 1]) to pre-quantisation features, downsampling by 2 ** (len(ch_mult) - 1)."""

    def __init__(self, *, ch: int, ch_mult: Sequence[int], num_res_blocks: int, attn_resolutions: Sequence[int],
                 in_channels: int, resolution: int, z_channels: int, double_z: bool = True, dropout: float = 0.0,
                 resamp_with_conv: bool = True, **_unused: object) -> None:
        super().__init__()
        self.conv_in = conv3x3(in_channels, ch)
        self.down = nn.ModuleList()
        width, res = ch, resolution
        for level, mult in enumerate(ch_mult):
            stage = Level([width] + [ch * mult] * num_res_blocks, res in attn_resolutions, dropout)
            width = ch * mult
            if level != len(ch_mult) - 1:
                stage.downsample = Downsample(width, resamp_with_conv)
                res //= 2
            self.down.append(stage)
        self.mid = MidBlock(width, dropout)
        self.norm_out = normalize(width)
        self.conv_out = conv3x3(width, 2 * z_channels if double_z else z_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features of image batch `x`."""
        h = self.conv_in(x)
        for stage in self.down:
            h = stage.run_blocks(h)
            if hasattr(stage, "downsample"):
                h = stage.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Post-quantisation features to an image in about [-1, 1], upsampling by 2 ** (len(ch_mult) - 1)."""

    def __init__(self, *, ch: int, out_ch: int, ch_mult: Sequence[int], num_res_blocks: int,
                 attn_resolutions: Sequence[int], resolution: int, z_channels: int, dropout: float = 0.0,
                 resamp_with_conv: bool = True, **_unused: object) -> None:
        super().__init__()
        width = ch * ch_mult[-1]
        res = resolution // 2 ** (len(ch_mult) - 1)
        self.conv_in = conv3x3(z_channels, width)
        self.mid = MidBlock(width, dropout)
        stages: list[Level] = []
        for level in reversed(range(len(ch_mult))):
            stage = Level([width] + [ch * ch_mult[level]] * (num_res_blocks + 1), res in attn_resolutions, dropout)
            width = ch * ch_mult[level]
            if level != 0:
                stage.upsample = Upsample(width, resamp_with_conv)
                res *= 2
            stages.insert(0, stage)
        self.up = nn.ModuleList(stages)
        self.norm_out = normalize(width)
        self.conv_out = conv3x3(width, out_ch)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Image batch decoded from features `z`."""
        h = self.mid(self.conv_in(z))
        for stage in reversed(self.up):
            h = stage.run_blocks(h)
            if hasattr(stage, "upsample"):
                h = stage.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))
