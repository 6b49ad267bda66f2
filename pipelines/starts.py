"""Where an optimisation or an edit starts: the best of a pool of starts, and an edit's recoloured regions.

A masked edit that starts from its source stalls near the source's colour: a yellow circle asked to become blue
comes out orange, a black one asked to become white stays dark. Starting from the region turned round the hue
wheel, with its lightness flipped or tinted (a white region has no hue to turn), and keeping whichever start CLIP
likes best, lets it get there (docs/shapes_models.md, "Edits that start near the target" and "Tinted starts").
"""

from __future__ import annotations

import math
from typing import Callable

import kornia
import torch

from pipelines.parsers import HUE_TURNS, TINTS

CANDIDATE_CHUNK = 8  # candidates scored at once
TINT_SATURATION = 0.6  # a tinted region's least HSV saturation: white turns pink, grey turns a muted colour


def best_candidates(candidates: torch.Tensor, count: int, losses: Callable[[torch.Tensor], torch.Tensor],
                    chunk: int = CANDIDATE_CHUNK) -> torch.Tensor:
    """Of `candidates` (N * count of them, image k's at rows k, k + count, ...), the `count` whose losses (one per
    candidate, computed `chunk` at a time without gradients) are lowest, one per image."""
    with torch.no_grad():
        scores = torch.cat([losses(part).float() for part in candidates.split(chunk)])
    best = scores.view(-1, count).argmin(dim=0)  # (count,): the winning candidate row of each image
    return candidates[best * count + torch.arange(count, device=candidates.device)]


def turned(images: torch.Tensor, mask: torch.Tensor, fractions: torch.Tensor) -> torch.Tensor:
    """`images` (N, 3, H, W) with the region where `mask` is 1 turned round the hue wheel by each of `fractions`
    (T of them, fractions of a circle): (T * N, 3, H, W), turn t of image i at row t * N + i, the rest as it was."""
    count = images.shape[0]
    angles = torch.remainder(2 * math.pi * fractions + math.pi, 2 * math.pi) - math.pi  # kornia takes [-pi, pi]
    repeated = images.repeat(len(fractions), 1, 1, 1)
    rotated = kornia.enhance.adjust_hue(repeated, angles.to(images).repeat_interleave(count))
    region = mask.expand(count, -1, -1, -1).repeat(len(fractions), 1, 1, 1)  # one mask, or one per image
    return rotated * region + repeated * (1 - region)


def recoloured(images: torch.Tensor, mask: torch.Tensor, turns: int) -> torch.Tensor:
    """`images` (N, 3, H, W) with the region where `mask` is 1 turned round the hue wheel by k / (turns + 1) of a
    circle, k = 1..turns: (turns * N, 3, H, W), turn k of image i at row (k - 1) * N + i, the rest as it was."""
    return turned(images, mask, torch.arange(1, turns + 1, dtype=torch.float64) / (turns + 1))


HSVChange = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def hsv_changed(images: torch.Tensor, mask: torch.Tensor, change: HSVChange) -> torch.Tensor:
    """`images` (N, 3, H, W) with the region where `mask` is 1 given the HSV channels that `change` makes of its
    (hue, saturation, value), the rest as it was."""
    hue, saturation, value = kornia.color.rgb_to_hsv(images).unbind(1)
    changed = kornia.color.hsv_to_rgb(torch.stack(change(hue, saturation, value), 1))
    return changed * mask + images * (1 - mask)


def lightness_flipped(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`images` (N, 3, H, W) with the region where `mask` is 1 flipped in lightness (HSV value v -> 1 - v, hue and
    saturation kept: black turns white, a bright colour nearly black, mid grey stays), the rest as it was."""
    return hsv_changed(images, mask, lambda hue, saturation, value: (hue, saturation, 1 - value))


def tinted(images: torch.Tensor, mask: torch.Tensor, count: int) -> torch.Tensor:
    """`images` (N, 3, H, W) with the region where `mask` is 1 saturated to at least TINT_SATURATION, then turned by
    (k + 1/2) / TINTS of a circle, k = 0..count - 1: halfway between the HUE_TURNS turns. A white or grey
    region, which has no hue to turn, gets each hue; a coloured one gets the hues between (orange -> yellow)."""
    saturated = hsv_changed(images, mask, lambda hue, saturation, value: (hue, saturation.clamp(min=TINT_SATURATION),
                                                                           value))
    halfway = (torch.arange(count, dtype=torch.float64) + 0.5) / TINTS
    return turned(saturated, mask, halfway)


def recolourable(mask: object, source_text: str | None) -> bool:
    """Whether an edit draws recoloured starts: one inside a mask, or a directional one (it has a target)."""
    return mask is not None or bool(source_text)


def start_region(images: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The region an edit's starts recolour: its mask, or the whole image without one."""
    return mask if mask is not None else torch.ones_like(images[:, :1])


def region_recolourings(images: torch.Tensor, mask: torch.Tensor, count: int) -> torch.Tensor:
    """Up to `count` recolourings of each image's region, in the order a pool tries them: its hue turned through
    HUE_TURNS steps of the wheel, its lightness flipped, then tinted to the TINTS hues halfway between;
    recolouring j of image i at row j * N + i."""
    parts = [recoloured(images, mask, min(HUE_TURNS, count))] if count else []
    if count > HUE_TURNS:
        parts.append(lightness_flipped(images, mask))
    if count > HUE_TURNS + 1:
        parts.append(tinted(images, mask, min(TINTS, count - HUE_TURNS - 1)))
    return torch.cat(parts)
