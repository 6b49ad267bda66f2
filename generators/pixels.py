"""The image itself as the generator: raw RGB pixels, or the decorrelated-colour Fourier image of Lucid and pixray.

The Fourier parameterisations hold a spectrum whose frequencies are scaled by 1/f, mapped through decorrelated
colour axes and a sigmoid; gradient steps on it move broad, natural colour regions instead of single pixels, which
optimises far better than raw RGB (Olah et al. 2017, Lucid). `lucid` keeps Lucid's colour map, the square root of
ImageNet's colour correlation, whose two chroma axes are 0.28 and 0.13 times as long as the luminance axis: Adam
steps every coordinate by about the same amount, so chroma moves 3.6 and 7.4 times more slowly and images stay pale.
`fft` (the default) takes the same axes at equal length, so a prompt's colour is as reachable as its lightness
(docs/shapes_models.md, "Pixels-CLIP: balanced colour axes").
"""

from __future__ import annotations

import math

import torch

from generators.base import LatentGenerator
from generators.vqgan.autograd import clamp_with_grad
from generators.names import DEFAULT_SPECTRUM_DECAY, PARAMETERIZATIONS
from guidance.errors import InvalidInputError


# Lucid's square root of ImageNet's colour correlation (its SVD): columns luminance, then two chroma axes.
_COLOUR_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=torch.float64)
LUCID_COLOURS = (_COLOUR_SQRT / _COLOUR_SQRT.norm(dim=0).max()).float()  # Lucid's: column norms 1, 0.28, 0.13
BALANCED_COLOURS = (_COLOUR_SQRT / _COLOUR_SQRT.norm(dim=0)).float()  # the same axes, each of norm 1
COLOUR_MAPS = {"fft": BALANCED_COLOURS, "lucid": LUCID_COLOURS}  # Fourier parameterization -> its colour map
SPECTRUM_INIT_STD = 0.01  # Lucid's starting spectrum: a nearly flat grey image
FFT_IMAGE_SCALE = 4.0  # Lucid divides the inverse transform by 4 before the colour map


class PixelGenerator(LatentGenerator):
    """Pixels as the latent: `rgb` (B, 3, H, W) values in [0, 1], or `fft` and `lucid` a (B, 3, H, W//2+1, 2)
    spectrum (balanced or Lucid's colour axes)."""

    def __init__(self, parameterization: str = "fft", decay: float = DEFAULT_SPECTRUM_DECAY):
        super().__init__()
        if parameterization not in PARAMETERIZATIONS:
            raise InvalidInputError(f"unknown pixel parameterization {parameterization!r}; "
                                    f"choose one of {', '.join(PARAMETERIZATIONS)}")
        if not (math.isfinite(decay) and decay >= 0):
            raise InvalidInputError(f"--spectrum-decay must be a non-negative number, got {decay}")
        if parameterization == "rgb" and decay != DEFAULT_SPECTRUM_DECAY:
            raise InvalidInputError("--spectrum-decay applies to the Fourier parameterizations (fft, lucid), not rgb")
        self.parameterization, self.decay = parameterization, decay
        self.name = parameterization
        colour = COLOUR_MAPS.get(parameterization, torch.eye(3))  # raw rgb: the identity (it only carries the device)
        self.register_buffer("colour", colour.clone(), persistent=False)

    @property
    def factor(self) -> int:
        """Any size for raw pixels; even sides for a spectrum (its half-width must say the width)."""
        return 1 if self.parameterization == "rgb" else 2

    def random_latent(self, batch: int, height: int, width: int,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """Uniform noise pixels (`rgb`), or a small random spectrum (a near-grey image)."""
        device = generator.device if generator is not None else self.colour.device
        if self.parameterization == "rgb":
            return torch.rand((batch, 3, height, width), generator=generator, device=device).to(self.colour.device)
        shape = (batch, 3, height, width // 2 + 1, 2)
        noise = torch.randn(shape, generator=generator, device=device) * SPECTRUM_INIT_STD
        return noise.to(self.colour.device)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1]: clamped pixels, or the spectrum's decorrelated-colour image through a sigmoid."""
        if self.parameterization == "rgb":
            return clamp_with_grad(latent, 0.0, 1.0)
        height, width = latent.shape[2], self._width(latent)
        spectrum = torch.view_as_complex(latent.float().contiguous()) * self._scale(height, width, latent.device)
        image = torch.fft.irfft2(spectrum, s=(height, width), norm="ortho") / FFT_IMAGE_SCALE
        return torch.sigmoid(torch.einsum("bchw,dc->bdhw", image, self.colour))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """The latent of [0, 1] images (the exact inverse of `decode` for pixels strictly inside (0, 1))."""
        if self.parameterization == "rgb":
            return images.float().clamp(0, 1)
        height, width = images.shape[-2:]
        logits = torch.logit(images.float().clamp(1e-3, 1 - 1e-3))
        image = torch.einsum("bdhw,cd->bchw", logits, torch.linalg.inv(self.colour)) * FFT_IMAGE_SCALE
        spectrum = torch.fft.rfft2(image, norm="ortho") / self._scale(height, width, images.device)
        return torch.view_as_real(spectrum).contiguous()

    @torch.no_grad()
    def project_(self, latent: torch.Tensor) -> torch.Tensor:
        """Keep raw pixels in [0, 1]; a spectrum needs nothing."""
        return latent.clamp_(0, 1) if self.parameterization == "rgb" else latent

    def _scale(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        """Lucid's 1/f^decay spectrum scale, with the lowest frequencies capped at 1/max(height, width)."""
        fy = torch.fft.fftfreq(height, device=device).view(-1, 1)
        fx = torch.fft.rfftfreq(width, device=device).view(1, -1)
        frequencies = (fx.square() + fy.square()).sqrt()
        return 1.0 / frequencies.clamp(min=1.0 / max(height, width)) ** self.decay

    @staticmethod
    def _width(latent: torch.Tensor) -> int:
        """The (even) image width a half spectrum stands for."""
        return (latent.shape[3] - 1) * 2


def load_pixels(name: str = "fft", device: torch.device | str | None = None,
                spectrum_decay: float = DEFAULT_SPECTRUM_DECAY) -> PixelGenerator:
    """The pixel generator for a parameterization name: `fft` (decorrelated Fourier image, its amplitudes falling
    as 1/f^spectrum_decay), `lucid` (the same with Lucid's colour map) or `rgb`."""
    generator = PixelGenerator(str(name).strip(), spectrum_decay)
    return generator if device is None else generator.to(device)
