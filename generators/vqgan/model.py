"""The VQGAN module: taming-compatible weights, plus the latent helpers VQGAN-CLIP optimises with."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from generators.base import LatentGenerator
from generators.vqgan.autograd import clamp_with_grad
from generators.vqgan.blocks import Decoder, Encoder
from generators.vqgan.config import VQGANConfig
from generators.vqgan.quantize import GumbelQuantize, VectorQuantizer, quantize_straight_through
from guidance.errors import InvalidInputError


class VQGAN(LatentGenerator):
    """A frozen taming VQGAN (VQModel or GumbelVQ) used as a differentiable image generator from a latent `z`.

    Parameter names equal taming's, so `load_state_dict(strict=True)` accepts a taming state dict minus `loss.*`."""

    def __init__(self, config: VQGANConfig) -> None:
        super().__init__()
        self.config = config
        z_channels = config.ddconfig["z_channels"]
        self.encoder = Encoder(**config.ddconfig)
        self.decoder = Decoder(**config.ddconfig)
        if config.gumbel:
            self.quantize: VectorQuantizer | GumbelQuantize = GumbelQuantize(z_channels, config.embed_dim,
                                                                             config.n_embed)
        else:
            self.quantize = VectorQuantizer(config.n_embed, config.embed_dim)
        self.quant_conv = nn.Conv2d(z_channels, config.embed_dim, kernel_size=1)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, z_channels, kernel_size=1)
        self.requires_grad_(False)
        self.eval()
        self._low_precision: tuple[tuple, dict[str, torch.Tensor]] | None = None  # see decoder_weights

    @property
    def factor(self) -> int:
        """Pixels per latent position along each side."""
        return self.config.factor

    @property
    def embed_dim(self) -> int:
        """Channels of the latent `z`."""
        return self.config.embed_dim

    @property
    def n_embed(self) -> int:
        """Number of codebook vectors."""
        return self.config.n_embed

    @property
    def codebook(self) -> torch.Tensor:
        """The (n_embed, embed_dim) codebook."""
        return self.quantize.codebook

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """(channels, rows, columns) of the latent for an image of `height` x `width` pixels."""
        if height <= 0 or width <= 0 or height % self.factor or width % self.factor:
            raise InvalidInputError(
                f"image size {width}x{height} must be positive multiples of {self.factor} for this VQGAN")
        return self.embed_dim, height // self.factor, width // self.factor

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Continuous latent (before quantisation) of images BCHW in [0, 1]."""
        return self.quant_conv(self.encoder(images * 2 - 1))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images BCHW in [0, 1] from latent `z`, quantised straight-through so gradients reach `z`."""
        quantized = quantize_straight_through(z, self.codebook)
        features = self.post_quant_conv(quantized)
        weights = self.decoder_weights(features.device)
        if weights is None:
            images = self.decoder(features)
        else:
            features = features.to(weights["conv_in.weight"].dtype).contiguous(memory_format=torch.channels_last)
            images = functional_call(self.decoder, weights, (features,)).contiguous()
        return clamp_with_grad((images + 1) / 2, 0.0, 1.0)

    def decoder_weights(self, device: torch.device) -> dict[str, torch.Tensor] | None:
        """Under CPU bf16 autocast with a frozen decoder: its weights cast once to bf16, 4-D ones channels_last
        (oneDNN's AMX kernels), kept while the weights are unchanged; else None (plain autocast).

        Autocast recasts frozen weights at every op and keeps NCHW. Measured decoder forward + backward at 256x256
        on this CPU (load average 15): fp32 42.0 s, autocast 18.0 s, autocast + channels_last 13.0 s, these
        weights 10.6 s. Costs one bf16 copy of the decoder (2 bytes per parameter, about 85 MB for f16_16384)."""
        dtype = torch.get_autocast_dtype("cpu") if device.type == "cpu" and torch.is_autocast_enabled("cpu") else None
        parameters = list(self.decoder.named_parameters())
        if dtype != torch.bfloat16 or any(p.requires_grad for _, p in parameters):
            return None
        key = tuple((p.data_ptr(), p._version, p.device) for _, p in parameters)
        if self._low_precision is None or self._low_precision[0] != key:
            with torch.no_grad():
                weights = {name: (p.to(dtype).contiguous(memory_format=torch.channels_last) if p.ndim == 4
                                  else p.to(dtype)) for name, p in parameters}
            self._low_precision = (key, weights)
        return self._low_precision[1]

    @torch.no_grad()
    def project_(self, z: torch.Tensor) -> torch.Tensor:
        """Clamp `z` in place to the codebook's per-dimension range (call after each optimiser step)."""
        codebook = self.codebook
        low = codebook.amin(0).to(z.dtype).view(1, -1, 1, 1)
        high = codebook.amax(0).to(z.dtype).view(1, -1, 1, 1)
        return z.clamp_(low, high)

    def random_latent(self, batch: int, height: int, width: int,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """Latent of codebook vectors at uniformly random indices, for `batch` images of `height` x `width` pixels."""
        _, rows, columns = self.latent_shape(height, width)
        device = generator.device if generator is not None else self.codebook.device
        indices = torch.randint(self.n_embed, (batch, rows, columns), generator=generator, device=device)
        return F.embedding(indices.to(self.codebook.device), self.codebook).permute(0, 3, 1, 2).contiguous()
