"""Where an optimisation or an edit starts: the best of a pool of starts, and an edit's recoloured regions.

A masked edit that starts from its source stalls near the source's colour: a yellow circle asked to become blue
comes out orange, a black one asked to become white stays dark. Starting from the region turned round the hue
wheel or with its lightness flipped, and keeping whichever start CLIP likes best, lets it get there
(docs/shapes_models.md, "Edits that start near the target").
"""

from __future__ import annotations

import math
from typing import Callable

import kornia
import torch

from pipelines.parsers import HUE_TURNS

CANDIDATE_CHUNK = 8  # candidates scored at once


def best_candidates(candidates: torch.Tensor, count: int, losses: Callable[[torch.Tensor], torch.Tensor],
                    chunk: int = CANDIDATE_CHUNK) -> torch.Tensor:
    """Of `candidates` (N * count of them, image k's at rows k, k + count, ...), the `count` whose losses (one per
    candidate, computed `chunk` at a time without gradients) are lowest, one per image."""
    with torch.no_grad():
        scores = torch.cat([losses(part).float() for part in candidates.split(chunk)])
    best = scores.view(-1, count).argmin(dim=0)  # (count,): the winning candidate row of each image
    return candidates[best * count + torch.arange(count, device=candidates.device)]


def recoloured(images: torch.Tensor, mask: torch.Tensor, turns: int) -> torch.Tensor:
    """`images` (N, 3, H, W) with the region where `mask` is 1 turned round the hue wheel by k / (turns + 1) of a
    circle, k = 1..turns: (turns * N, 3, H, W), turn k of image i at row (k - 1) * N + i, the rest as it was."""
    count = images.shape[0]
    fractions = torch.arange(1, turns + 1, device=images.device, dtype=images.dtype) / (turns + 1)
    angles = torch.remainder(2 * math.pi * fractions + math.pi, 2 * math.pi) - math.pi  # kornia takes [-pi, pi]
    repeated = images.repeat(turns, 1, 1, 1)
    turned = kornia.enhance.adjust_hue(repeated, angles.repeat_interleave(count))
    region = mask.expand(count, -1, -1, -1).repeat(turns, 1, 1, 1)  # one mask, or one per image
    return turned * region + repeated * (1 - region)


def lightness_flipped(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`images` (N, 3, H, W) with the region where `mask` is 1 flipped in lightness (HSV value v -> 1 - v, hue and
    saturation kept: black turns white, a bright colour nearly black, mid grey stays), the rest as it was."""
    hue, saturation, value = kornia.color.rgb_to_hsv(images).unbind(1)
    flipped = kornia.color.hsv_to_rgb(torch.stack([hue, saturation, 1 - value], 1))
    return flipped * mask + images * (1 - mask)


def region_recolourings(images: torch.Tensor, mask: torch.Tensor, count: int) -> torch.Tensor:
    """Up to `count` recolourings of each image's region, in the order a pool tries them: its hue turned through
    HUE_TURNS steps of the wheel, then its lightness flipped; recolouring j of image i at row j * N + i."""
    turns = min(HUE_TURNS, count)
    parts = [recoloured(images, mask, turns)] if turns else []
    if count > HUE_TURNS:
        parts.append(lightness_flipped(images, mask))
    return torch.cat(parts)
