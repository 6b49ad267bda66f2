"""Random cutouts of a batch of images, resized and augmented on the device in one batched call each."""

from __future__ import annotations

import kornia.augmentation as K
import torch
from torch import nn
from torchvision.ops import roi_align

from .errors import InvalidInputError
from .names import AUGMENT_PRESETS
from .validation import MAX_CUTN, check_count, check_number


def build_augmentations(preset: str) -> nn.Module | None:
    """The kornia augmentation stack for a preset: 'none', 'light' (flip, affine), 'geometric' (flip, affine,
    perspective, erasing: the field's set without its colour jitter, for colour-exact prompts) or 'default'
    (the field's set)."""
    if preset == "none":
        return None
    flip_affine = [
        K.RandomHorizontalFlip(p=0.5),
        K.RandomAffine(degrees=15, translate=0.1, p=0.8, padding_mode="border"),
    ]
    if preset == "light":
        return K.AugmentationSequential(*flip_affine)
    perspective = K.RandomPerspective(distortion_scale=0.7, p=0.7)
    erasing = K.RandomErasing(scale=(0.1, 0.4), ratio=(0.3, 3.3), value=0.0, p=0.7)
    if preset == "geometric":
        return K.AugmentationSequential(*flip_affine, perspective, erasing)
    if preset == "default":
        return K.AugmentationSequential(
            *flip_affine, perspective,
            K.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1, hue=0.1, p=0.7),
            erasing,
        )
    raise InvalidInputError(f"unknown augmentation preset {preset!r}; choose one of {', '.join(AUGMENT_PRESETS)}")


class Augment(nn.Module):
    """A preset's augmentations on a [0, 1] BCHW batch, then per-image gaussian noise of a random strength up to
    `noise` (none for the 'none' preset); the result is clamped to [0, 1]."""

    def __init__(self, preset: str = "default", noise: float = 0.1):
        super().__init__()
        self.noise = noise if preset != "none" else 0.0
        self.augmentations = build_augmentations(preset)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The augmented batch, same shape."""
        return self.pair(images)[0]

    def pair(self, images: torch.Tensor, *others: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """`images` and each batch of `others` (same shape) augmented alike: image i of every batch gets the same
        transform and the same noise, as paired views of an edit and its source need."""
        batches = (images, *others)
        if self.augmentations is not None:
            augmented = self.augmentations(*batches, data_keys=["input"] * len(batches))
            batches = tuple(augmented) if others else (augmented,)
        if self.noise > 0:
            sigma = torch.rand(images.shape[0], 1, 1, 1, device=images.device, dtype=images.dtype) * self.noise
            noise = sigma * torch.randn_like(images)
            batches = tuple(batch + noise for batch in batches)
        return tuple(batch.clamp(0, 1) for batch in batches)


class MakeCutouts(nn.Module):
    """`cutn` random square crops per image, side `rand() ** cut_pow * (max - min) + min`, resized to `cut_size`."""

    def __init__(self, cut_size: int, cutn: int = 32, cut_pow: float = 1.0, min_size: int | None = None,
                 max_size: int | None = None, augment: str = "default", noise: float = 0.1):
        super().__init__()
        cutn = check_count("cutn", cutn, 1, MAX_CUTN)
        if cut_size < 1:
            raise InvalidInputError(f"cut_size must be positive, got {cut_size}")
        cut_pow = check_number("cut_pow", cut_pow, above=0)
        if min_size is not None and max_size is not None and min_size > max_size:
            raise InvalidInputError(f"min_size {min_size} is larger than max_size {max_size}")
        self.cut_size, self.cutn, self.cut_pow = cut_size, cutn, cut_pow
        self.min_size, self.max_size = min_size, max_size
        self.augment = augment
        self.augmentations = Augment(augment, noise)

    def size_bounds(self, height: int, width: int) -> tuple[int, int]:
        """The smallest and largest crop side for an image of this size."""
        short = min(height, width)
        max_size = min(self.max_size or short, short)
        min_size = min(self.min_size or min(short, self.cut_size), max_size)
        return max(min_size, 1), max_size

    def sample_boxes(self, height: int, width: int, count: int, device: torch.device) -> torch.Tensor:
        """`count` random square boxes as (count, 4, 2) corner points (x, y), clockwise from top-left."""
        min_size, max_size = self.size_bounds(height, width)
        sizes = (torch.rand(count, device=device) ** self.cut_pow * (max_size - min_size + 1) + min_size).floor()
        sizes = sizes.clamp(max=max_size)
        x0 = (torch.rand(count, device=device) * (width - sizes + 1)).floor()
        y0 = (torch.rand(count, device=device) * (height - sizes + 1)).floor()
        x1, y1 = x0 + sizes - 1, y0 + sizes - 1
        return torch.stack([torch.stack([x0, y0], -1), torch.stack([x1, y0], -1),
                            torch.stack([x1, y1], -1), torch.stack([x0, y1], -1)], dim=1)

    def crop(self, images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Crop the same boxes from every image: (B, C, H, W) and (N, 4, 2) -> (N * B, C, S, S), cutout-major.

        Each cutout samples its box bilinearly on an S x S grid from corner pixel to corner pixel (kornia's
        `crop_and_resize` with `align_corners=True`), done by `roi_align` with one sample per bin, reading every
        box from the images themselves: no image is copied per cutout, forward or backward."""
        batch, n, size = images.shape[0], boxes.shape[0], self.cut_size
        dtype = images.dtype if images.dtype in (torch.float32, torch.float64) else torch.float32
        top_left, bottom_right = boxes[:, 0].to(dtype), boxes[:, 2].to(dtype)
        step = (bottom_right - top_left) / max(size - 1, 1)
        start = top_left + 0.5 - 0.5 * step  # aligned roi_align samples bin j at start - 0.5 + (j + 0.5) * step
        corners = torch.cat([start, start + size * step], dim=1).repeat_interleave(batch, dim=0)
        index = torch.arange(batch, device=images.device, dtype=dtype).repeat(n)  # cutout-major: image b of box k
        rois = torch.cat([index[:, None], corners], dim=1)
        cutouts = roi_align(images.to(dtype), rois, (size, size), spatial_scale=1.0, sampling_ratio=1, aligned=True)
        return cutouts.to(images.dtype)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Cutouts of a [0, 1] BCHW batch as one (cutn * B, C, cut_size, cut_size) batch, cutout-major."""
        return self.pair(images)[0]

    def pair(self, images: torch.Tensor, *others: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Cutouts of `images` and of each same-shape batch in `others`, cut with the same boxes and augmented
        alike, so that view i of every batch shows the same region the same way (an edit and its source)."""
        if images.ndim != 4:
            raise InvalidInputError(f"MakeCutouts expects BCHW images, got shape {tuple(images.shape)}")
        boxes = self.sample_boxes(images.shape[-2], images.shape[-1], self.cutn, images.device)
        return self.augmentations.pair(*(self.crop(batch, boxes) for batch in (images, *others)))

    def extra_repr(self) -> str:
        return f"cut_size={self.cut_size}, cutn={self.cutn}, cut_pow={self.cut_pow}, augment={self.augment!r}"
