"""The interface every differentiable generator implements, so one optimisation loop serves them all."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn


class LatentGenerator(nn.Module, ABC):
    """A frozen, differentiable map from a latent to [0, 1] BCHW images, whose latent an optimiser moves.

    Implementations give a starting latent (random from a torch.Generator, or encoded from images), `decode`
    it differentiably, keep it valid after each optimiser step (`project_`), and say their size granularity.
    """

    @property
    def device(self) -> torch.device:
        """The device the generator's weights (or buffers) live on."""
        return next(iter([*self.parameters(), *self.buffers()])).device

    @property
    @abstractmethod
    def factor(self) -> int:
        """Output sides are multiples of this many pixels."""

    @abstractmethod
    def random_latent(self, batch: int, height: int, width: int,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """A random starting latent for `batch` images of `height` x `width` pixels."""

    @abstractmethod
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """The latent that decodes to (approximately) these [0, 1] BCHW images."""

    @abstractmethod
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """[0, 1] BCHW images from a latent, differentiably."""

    @torch.no_grad()
    def project_(self, latent: torch.Tensor) -> torch.Tensor:
        """Keep a latent valid after an optimiser step, in place (default: nothing to do)."""
        return latent

    def keep_outside(self, images: torch.Tensor | None, mask: torch.Tensor | None) -> None:
        """Before an edit inside `mask` (1 = change) of `images`, or with None after one: a generator that draws in
        steps may blend the images in outside the mask at every step (default: nothing; the loop composites)."""

    def latent_penalty(self, latent: torch.Tensor) -> torch.Tensor:
        """A term the optimiser adds to the loss to keep the latent likely (default: none, zero)."""
        return latent.new_zeros(())

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        """Same as `decode`, so a generator can be wrapped (compile, DDP) as a latent-to-image function."""
        return self.decode(latent)
