"""Diffusers denoisers behind one interface: predicted noise and x0, the noise schedule, images in and out.

`PixelDiffusion` wraps an unconditional UNet2DModel that works on [-1, 1] pixels (google/ddpm-*-256);
`ClipConditionedDiffusion` one that also takes a CLIP text embedding (added to its timestep embedding, as unCLIP's
decoder does); `LatentDiffusion` wraps the Stable Diffusion 1.x/2.x parts: a text-conditioned UNet2DConditionModel on the
latents of an AutoencoderKL, conditioned by a CLIPTextModel. Both are plain frozen modules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel, UNet2DModel
from torch import nn

from generators.names import DEFAULT_CFG_SCALE
from guidance.errors import InvalidInputError

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


@dataclass(frozen=True)
class TextCondition:
    """What a text-conditioned UNet follows: the prompt's embeddings, and a negative one for classifier-free guidance."""

    embeddings: torch.Tensor  # (1, tokens, width) token-wise, or (1, width) pooled
    negative: torch.Tensor | None = None  # the same shape, used when scale != 1
    scale: float = 1.0


def classifier_free(unet_call: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor,
                    condition: TextCondition) -> torch.Tensor:
    """`unet_call(x, condition batch)` for samples x, mixed as `uncond + scale * (cond - uncond)` when the
    condition has a negative (classifier-free guidance), both halves in one UNet pass."""
    batch = x.shape[0]
    positive = condition.embeddings.expand(batch, *condition.embeddings.shape[1:])
    if condition.negative is None:
        return unet_call(x, positive)
    negative = condition.negative.expand(batch, *condition.negative.shape[1:])
    unconditional, conditional = unet_call(torch.cat([x, x]), torch.cat([negative, positive])).chunk(2)
    return unconditional + condition.scale * (conditional - unconditional)


def downsampling_factor(block_out_channels: Any) -> int:
    """How much a diffusers encoder or UNet shrinks its input: one halving between consecutive blocks."""
    return 2 ** (len(block_out_channels) - 1)


class DiffusionModel(nn.Module):
    """A frozen UNet predicting noise under a diffusers noise schedule, with a uniform interface for the pipeline.

    Samples `x` live in the model's space (pixels in [-1, 1], or latents); `to_image` and `from_image` map
    them to and from [0, 1] BCHW images, differentiably. Timesteps are ints in [0, num_train_timesteps).
    """

    latent_factor = 1  # pixels per sample element along each side
    text_conditioned = False  # whether the UNet follows a text (see `condition`)

    def __init__(self, unet: nn.Module, scheduler_config: dict[str, Any], name: str, info: dict[str, Any] | None = None):
        super().__init__()
        self.unet = unet.eval().requires_grad_(False)
        self.scheduler_config = dict(scheduler_config)
        self.name = name
        self.info = dict(info or {})
        self.prediction_type = self.scheduler_config.get("prediction_type", "epsilon")
        if self.prediction_type not in PREDICTION_TYPES:
            raise InvalidInputError(f"{name}: unsupported prediction_type {self.prediction_type!r} in its scheduler config; "
                                    f"supported: {', '.join(PREDICTION_TYPES)}")
        schedule = DDPMScheduler.from_config({k: v for k, v in self.scheduler_config.items() if not k.startswith("_")})
        self.alphas_cumprod = schedule.alphas_cumprod.double()  # CPU: scalar look-ups never touch the device
        # Timesteps as device scalars: indexing with a Python int gives the UNet its timestep without a host copy.
        self.register_buffer("timestep_values", torch.arange(len(self.alphas_cumprod)), persistent=False)

    @property
    def device(self) -> torch.device:
        """The device the weights live on."""
        return next(self.unet.parameters()).device

    @property
    def num_train_timesteps(self) -> int:
        """Length of the training noise schedule."""
        return len(self.alphas_cumprod)

    @property
    def channels(self) -> int:
        """Channels of a sample."""
        return int(self.unet.config.in_channels)

    @property
    def size_factor(self) -> int:
        """Image sides must be multiples of this (latent factor times the UNet's downsampling)."""
        return self.latent_factor * downsampling_factor(self.unet.config.block_out_channels)

    @property
    def native_size(self) -> tuple[int, int]:
        """The (width, height) the model was trained at."""
        size = self.unet.config.sample_size
        height, width = (size, size) if isinstance(size, int) else size
        return int(width) * self.latent_factor, int(height) * self.latent_factor

    @property
    def default_cfg_scale(self) -> float:
        """Its classifier-free guidance scale when none is given: the one its folder's info recommends
        (`cfg_scale`), else DEFAULT_CFG_SCALE."""
        return float(self.info.get("cfg_scale", DEFAULT_CFG_SCALE))

    @property
    def finetuned(self) -> bool:
        """Whether this model was fine-tuned for an edit by this toolkit (its folder records the edit)."""
        return "finetuned_from" in self.info

    def alpha_bar(self, t: int) -> float:
        """Cumulative product of (1 - beta) up to timestep t."""
        return float(self.alphas_cumprod[int(t)])

    def sample_shape(self, width: int, height: int) -> tuple[int, int, int]:
        """(channels, height, width) of a sample that decodes to a width x height image."""
        return self.channels, height // self.latent_factor, width // self.latent_factor

    def condition(self, prompt: str, negative: str = "", scale: float = 1.0) -> TextCondition | None:
        """The UNet's conditioning for a text; None for unconditional models."""
        return None

    def unet_output(self, x: torch.Tensor, t: int, condition: TextCondition | None) -> torch.Tensor:
        """The raw UNet output for samples x at timestep t."""
        raise NotImplementedError

    def predict_eps(self, x: torch.Tensor, t: int, condition: TextCondition | None = None) -> torch.Tensor:
        """The predicted noise in x at timestep t (v- and x0-predicting models converted), float32."""
        out = self.unet_output(x, t, condition).float()
        if out.shape[1] == 2 * x.shape[1]:  # models that also learn their variance: keep the noise half
            out = out[:, : x.shape[1]]
        alpha = self.alpha_bar(t)
        if self.prediction_type == "v_prediction":
            return alpha**0.5 * out + (1 - alpha) ** 0.5 * x
        if self.prediction_type == "sample":
            return (x - alpha**0.5 * out) / (1 - alpha) ** 0.5
        return out

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: int) -> torch.Tensor:
        """The forward process q(x_t | x0): x0 noised to timestep t."""
        alpha = self.alpha_bar(t)
        return alpha**0.5 * x0 + (1 - alpha) ** 0.5 * noise

    def predict_x0(self, x: torch.Tensor, t: int, eps: torch.Tensor) -> torch.Tensor:
        """The clean sample implied by x at timestep t and its predicted noise."""
        alpha = self.alpha_bar(t)
        return (x - (1 - alpha) ** 0.5 * eps) / alpha**0.5

    def to_image(self, x: torch.Tensor) -> torch.Tensor:
        """Samples as images, nominally in [0, 1] (not clamped), differentiable."""
        raise NotImplementedError

    def from_image(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] BCHW images as samples."""
        raise NotImplementedError

    def with_unet(self, unet: nn.Module) -> "DiffusionModel":
        """The same model with another UNet of the same architecture (the other parts shared)."""
        raise NotImplementedError


class PixelDiffusion(DiffusionModel):
    """An unconditional pixel-space UNet2DModel: samples are images scaled to [-1, 1]."""

    def __init__(self, unet: UNet2DModel, scheduler_config: dict[str, Any], name: str, info: dict[str, Any] | None = None):
        super().__init__(unet, scheduler_config, name, info)

    def unet_output(self, x: torch.Tensor, t: int, condition: TextCondition | None) -> torch.Tensor:
        """The UNet2DModel output; an unconditional model takes no condition."""
        if condition is not None:
            raise ValueError("an unconditional pixel model takes no text condition")
        return self.unet(x, self.timestep_values[t]).sample

    def to_image(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] pixels to [0, 1]."""
        return (x.float() + 1) / 2

    def from_image(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] pixels to [-1, 1]."""
        return images.float() * 2 - 1

    def with_unet(self, unet: nn.Module) -> "PixelDiffusion":
        """The same schedule with another UNet."""
        return PixelDiffusion(unet, self.scheduler_config, self.name, self.info)


def conditioning_vectors(encoder: nn.Module, texts: Sequence[str], scale: float) -> torch.Tensor:
    """What a CLIP-conditioned UNet adds to its timestep embedding for each text: the CLIP's unit text embedding
    times `scale` (B, width); an empty text gives the zero vector, the unconditional input."""
    vectors = torch.zeros(len(texts), int(encoder.embed_dim), device=encoder.device)
    given = [index for index, text in enumerate(texts) if text.strip()]
    if given:
        with torch.no_grad():
            vectors[given] = encoder.encode_text([texts[index] for index in given]).float() * scale
    return vectors


class ClipConditionedDiffusion(PixelDiffusion):
    """A pixel UNet2DModel that follows a text through a CLIP's embedding of it, added to the timestep embedding
    (`class_embed_type='identity'`); trained with the condition dropped to zero at times, so the zero vector is
    its unconditional input for classifier-free guidance. Its folder's `clip_guidance.json` names the CLIP
    (`conditioning.clip`) and the embedding's scale (`conditioning.scale`)."""

    text_conditioned = True

    def __init__(self, unet: UNet2DModel, encoder: nn.Module, scheduler_config: dict[str, Any], name: str,
                 info: dict[str, Any]):
        super().__init__(unet, scheduler_config, name, info)
        self.encoder = encoder.eval().requires_grad_(False)
        self.embedding_scale = float(self.info["conditioning"]["scale"])

    def condition(self, prompt: str, negative: str = "", scale: float = 1.0) -> TextCondition:
        """The prompt's conditioning vector, and the negative text's (zero when empty) under classifier-free
        guidance (scale != 1)."""
        vectors = conditioning_vectors(self.encoder, [prompt, negative], self.embedding_scale)
        return TextCondition(vectors[:1], vectors[1:] if scale != 1 else None, scale)

    def unet_output(self, x: torch.Tensor, t: int, condition: TextCondition | None) -> torch.Tensor:
        """The UNet output for the condition's vectors, with classifier-free guidance where it has a negative."""
        if condition is None:
            raise ValueError("a CLIP-conditioned model needs a condition; use model.condition(prompt)")
        timestep = self.timestep_values[t]
        return classifier_free(lambda xs, vectors: self.unet(xs, timestep, class_labels=vectors).sample, x, condition)

    def with_unet(self, unet: nn.Module) -> "ClipConditionedDiffusion":
        """The same CLIP and schedule with another UNet."""
        return ClipConditionedDiffusion(unet, self.encoder, self.scheduler_config, self.name, self.info)


class LatentDiffusion(DiffusionModel):
    """Stable Diffusion 1.x/2.x: a text-conditioned UNet on AutoencoderKL latents, texts embedded by a CLIPTextModel."""

    text_conditioned = True

    def __init__(self, unet: UNet2DConditionModel, vae: AutoencoderKL, text_encoder: nn.Module, tokenizer: Any,
                 scheduler_config: dict[str, Any], name: str, info: dict[str, Any] | None = None):
        super().__init__(unet, scheduler_config, name, info)
        self.vae = vae.eval().requires_grad_(False)
        self.text_encoder = text_encoder.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.latent_factor = downsampling_factor(vae.config.block_out_channels)
        self.scaling_factor = float(vae.config.scaling_factor)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Token-wise embeddings (B, tokens, width) of texts, padded to the tokenizer's length."""
        tokens = self.tokenizer(texts, padding="max_length", max_length=self.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt")
        return self.text_encoder(tokens.input_ids.to(self.device))[0].float()

    def condition(self, prompt: str, negative: str = "", scale: float = 1.0) -> TextCondition:
        """Embeddings of the prompt, and of the negative text when classifier-free guidance is on (scale != 1)."""
        return TextCondition(self.encode_text([prompt]), self.encode_text([negative]) if scale != 1 else None, scale)

    def unet_output(self, x: torch.Tensor, t: int, condition: TextCondition | None) -> torch.Tensor:
        """The UNet output, mixed as `uncond + scale * (cond - uncond)` under classifier-free guidance."""
        if condition is None:
            raise ValueError("a text-conditioned model needs a condition; use model.condition(prompt)")
        timestep = self.timestep_values[t]
        return classifier_free(lambda xs, texts: self.unet(xs, timestep, encoder_hidden_states=texts).sample,
                               x, condition)

    def to_image(self, x: torch.Tensor) -> torch.Tensor:
        """Decode latents with the VAE to [0, 1] images (differentiable)."""
        return (self.vae.decode(x / self.scaling_factor).sample.float() + 1) / 2

    def from_image(self, images: torch.Tensor) -> torch.Tensor:
        """Encode [0, 1] images to latents: the mean of the VAE's posterior, scaled."""
        return self.vae.encode(images * 2 - 1).latent_dist.mean.float() * self.scaling_factor

    def with_unet(self, unet: nn.Module) -> "LatentDiffusion":
        """The same VAE, text encoder and schedule with another UNet."""
        return LatentDiffusion(unet, self.vae, self.text_encoder, self.tokenizer, self.scheduler_config, self.name, self.info)
