"""Where in an image a text edit should happen: CLIP's gradient relevance for the source-to-target text direction,
and the edit mask it gives (`--mask auto`).

The map is the magnitude of the gradient of the image embedding's projection on the text direction, with respect
to the pixels, summed over colour channels and smoothed over a window of 1/16 of the image's side. Gradients are
blurry: they spill over an object's edges. The mask refines the map edge-aware, guided by the image's own colours
(a joint bilateral blur over half the image, twice, at most REFINE_SIDE pixels across), so that relevance spreads
within regions of one colour and not across their edges, as CAM masks are refined in weakly supervised
segmentation; Otsu's threshold then splits the refined map into the region to edit and the rest.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from kornia.filters import joint_bilateral_blur, otsu_threshold

from .clip_loss import CLIPModels, as_ensemble, template_embedding
from .encoder import check_images
from .errors import InvalidInputError
from .templates import Template, choose_templates
from .validation import check_count

DEFAULT_GROW = 0  # pixels added around the region
REFINE_SIDE = 64  # the refinement's working size: the joint bilateral blur's cost grows as the side to the 4th
REFINE_PASSES = 2
REFINE_SIGMA_COLOUR = 0.05  # colour distance (L1 over RGB in [0, 1]) at which relevance stops spreading


def relevance_map(clip_models: CLIPModels, image: torch.Tensor, source_text: str, target_text: str,
                  templates: str | tuple[Template, ...] = "auto") -> torch.Tensor:
    """How much each pixel of a (1, 3, H, W) [0, 1] image moves its CLIP embedding along source -> target text,
    as (1, 1, H, W) in [0, 1] (the ensemble's weighted sum, smoothed, over its maximum)."""
    check_images(image)
    if image.shape[0] != 1:
        raise InvalidInputError(f"the relevance map takes one image, got {image.shape[0]}")
    chosen = choose_templates([source_text, target_text], templates)
    pixels = image.detach().float().clone().requires_grad_(True)
    projection = pixels.new_zeros(())
    for model, weight in as_ensemble(clip_models):
        direction = template_embedding(model, target_text, chosen) - template_embedding(model, source_text, chosen)
        if direction.norm() < 1e-6:
            raise InvalidInputError(f"source text {source_text!r} and target text {target_text!r} embed the same "
                                    "for CLIP, so there is no edit region to find; give two different texts")
        projection = projection + weight * (model.encode_image(pixels) @ F.normalize(direction, dim=-1).detach()).sum()
    (gradient,) = torch.autograd.grad(projection, pixels)
    relevance = gradient.abs().sum(1, keepdim=True)
    window = max(3, min(image.shape[-2:]) // 16) | 1
    relevance = F.avg_pool2d(relevance, window, stride=1, padding=window // 2, count_include_pad=False)
    return relevance / relevance.amax().clamp_min(1e-12)


def refine(relevance: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """The relevance map blurred within the image's regions of one colour (joint bilateral, at most REFINE_SIDE
    pixels across), at that working size."""
    height, width = image.shape[-2:]
    scale = min(1.0, REFINE_SIDE / max(height, width))
    if scale < 1:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        image = F.interpolate(image, size=size, mode="bilinear", antialias=True)
        relevance = F.interpolate(relevance, size=size, mode="bilinear", antialias=True)
    kernel = max(3, min(image.shape[-2:]) // 2) | 1
    for _ in range(REFINE_PASSES):
        relevance = joint_bilateral_blur(relevance, image.float(), kernel, REFINE_SIGMA_COLOUR,
                                         (kernel / 3, kernel / 3))
    return relevance


def relevance_mask(clip_models: CLIPModels, image: torch.Tensor, source_text: str, target_text: str,
                   grow: int = DEFAULT_GROW, templates: str | tuple[Template, ...] = "auto") -> torch.Tensor:
    """The region a source -> target text edit should change, as a (1, 1, H, W) mask of 0 and 1: the refined
    relevance over its Otsu threshold, grown by `grow` pixels."""
    check_count("grow", grow, 0, 64)
    relevance = refine(relevance_map(clip_models, image, source_text, target_text, templates), image.detach())
    over, _ = otsu_threshold(relevance, return_mask=True)
    mask = F.interpolate(over.float(), size=image.shape[-2:], mode="nearest")
    return F.max_pool2d(mask, 2 * grow + 1, stride=1, padding=grow) if grow else mask
