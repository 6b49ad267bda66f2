"""The interface every CLIP backend implements: a frozen model embedding [0, 1] images and texts as unit vectors."""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .errors import InvalidInputError


class CLIPEncoder(nn.Module, abc.ABC):
    """A frozen CLIP model that embeds [0, 1] images of any size and lists of texts as unit vectors.

    Backends (see `guidance.backends`) implement `image_features` and `text_features`; resizing, normalisation,
    input checks and unit-normalising the embeddings are shared. Members every backend provides: `name`,
    `image_size`, `embed_dim`, `context_length`, `mean`/`std` (buffers), `device`, `logit_scale`, `logit_bias`.
    """

    def __init__(self, name: str, image_size: int, embed_dim: int, mean: Sequence[float], std: Sequence[float],
                 context_length: int = 77):
        super().__init__()
        self.name = name
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.image_size: int = int(image_size)
        self.embed_dim: int = int(embed_dim)
        self.context_length: int = int(context_length)

    @property
    def device(self) -> torch.device:
        """The device the weights live on."""
        return self.mean.device

    @property
    def logit_scale(self) -> torch.Tensor | float:
        """The trained temperature (already exponentiated) that scales cosine similarities to logits; 100 if unknown."""
        return 100.0

    @property
    def logit_bias(self) -> torch.Tensor | float | None:
        """The logit bias of sigmoid-loss (SigLIP-style) models; None for softmax CLIPs."""
        return None

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Resize [0, 1] BCHW images to the model's input side and apply its mean/std, differentiably."""
        check_images(images)
        if images.shape[-2:] != (self.image_size, self.image_size):
            shrinking = min(images.shape[-2:]) > self.image_size
            images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear",
                                   align_corners=False, antialias=shrinking)
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm embeddings of [0, 1] BCHW images (any size, differentiable w.r.t. the images)."""
        check_images(images)  # before .to(), so a non-tensor gets the one-line error
        pixels = self.preprocess(images.to(self.device))
        return F.normalize(self.image_features(pixels).float(), dim=-1)

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-norm embeddings of a list of strings."""
        check_texts(texts)
        return F.normalize(self.text_features(list(texts)).float(), dim=-1)

    @abc.abstractmethod
    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Embeddings (B, embed_dim), not yet unit-normed, of preprocessed BCHW pixels (image_size square, on device)."""

    @abc.abstractmethod
    def text_features(self, texts: list[str]) -> torch.Tensor:
        """Embeddings (len(texts), embed_dim), not yet unit-normed, of a checked, non-empty list of strings."""

    saves_to_folder: bool = False  # `save` writes a folder (a path without suffix), not one weights file

    def save(self, path: str | Path) -> Path:
        """Save the model so that `load_clip(path)` restores it; backends that cannot be saved refuse in one line."""
        raise InvalidInputError(f"cannot save CLIP model '{self.name}': its backend ({type(self).__name__}) "
                                "does not support saving; save an open_clip model instead")


def check_images(images: torch.Tensor) -> None:
    """Raise a one-line InvalidInputError unless images is a float BCHW tensor with 3 channels."""
    if not isinstance(images, torch.Tensor):
        raise InvalidInputError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise InvalidInputError(f"images must be BCHW with 3 channels, got shape {tuple(images.shape)}; "
                                "use images.unsqueeze(0) for a single CHW image")
    if not images.is_floating_point():
        raise InvalidInputError(f"images must be float in [0, 1], got {images.dtype}; divide uint8 images by 255")


def check_texts(texts: Sequence[str]) -> None:
    """Raise a one-line InvalidInputError unless texts is a non-empty list of strings."""
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts) or len(texts) == 0:
        raise InvalidInputError("encode_text expects a non-empty list of strings, e.g. ['a red circle']")
