"""Noise optimisation (ReNO, DOODL): a diffusion model as a generator whose latent is its starting noise x_T.

`decode` runs a short deterministic sampler from the noise (K DDIM steps of a multi-step model, or the one step of
a one-step model such as sd-turbo) and backpropagates through it with gradient checkpointing: each step's
activations are recomputed in the backward pass, so memory stays flat in K. `latent_penalty` keeps the noise on
the Gaussian shell: 0.5*|e|^2 - (d-1)*log|e|, the negative log-density of a chi-distributed norm, as in ReNO.
For an edit inside a mask, `keep_outside` blends the source in outside the mask before every step (Blended
Diffusion), so the sampler draws the inside to fit the rest instead of a picture of its own.
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from generators.base import LatentGenerator
from generators.diffusion.loading import load_diffusion
from generators.diffusion.models import DiffusionModel, TextCondition
from generators.diffusion.sampling import ddim_invert, ddim_move
from generators.names import DEFAULT_NOISE_STEPS
from guidance.errors import InvalidInputError

NORM_WEIGHT = 0.01  # ReNO's weight of the norm regulariser
# Fixed-point refinements of each DDIM inversion step in `encode`. A few long steps invert poorly: on the shapes DDPM
# at 4 steps, plain inversion of 32 rendered shapes gives noise of RMS 0.30, far inside the Gaussian shell the
# sampler and the norm regulariser expect; refined twice, 0.94 (docs/shapes_models.md).
INVERSION_REFINE = 2
# Distilled few-step models: the most sampler steps they are made for (matched on the name's last part).
FEW_STEP_MODELS = {"sd-turbo": 4, "sdxl-turbo": 4}


def step_limit(model: DiffusionModel) -> int:
    """The most sampler steps a model is made for: a few for distilled models (its folder's `distilled_steps`, or
    a known name), else its training schedule's length."""
    known = FEW_STEP_MODELS.get(str(model.name).rstrip("/").split("/")[-1])
    return int(model.info.get("distilled_steps") or known or model.num_train_timesteps)


def default_steps(model: DiffusionModel) -> int:
    """The sampler steps noise optimisation runs by default: one for a one- or few-step model, else a few."""
    return 1 if step_limit(model) <= DEFAULT_NOISE_STEPS else DEFAULT_NOISE_STEPS


def trailing_timesteps(num_train_timesteps: int, steps: int) -> list[int]:
    """`steps` descending timesteps ending the schedule's intervals ("trailing" spacing): one step starts at T - 1,
    as few-step models expect."""
    return [round(num_train_timesteps - i * num_train_timesteps / steps) - 1 for i in range(steps)]


def norm_penalty(latent: torch.Tensor) -> torch.Tensor:
    """Sum over the batch of 0.5*|e|^2 - (d-1)*log|e| for each flattened sample e of d values, in fp32: lowest
    on the shell |e| = sqrt(d - 1) where Gaussian noise lies."""
    flat = latent.float().flatten(1)
    norm = flat.norm(dim=1)
    return (0.5 * norm.square() - (flat.shape[1] - 1) * norm.log()).sum()


class NoiseGenerator(LatentGenerator):
    """A diffusion model's deterministic K-step DDIM sampler, as a map from starting noise to [0, 1] images.

    Text-conditioned models follow `prompt` (with classifier-free guidance at `cfg_scale` where given).
    `checkpointing` recomputes each step in the backward pass instead of keeping its activations.
    """

    def __init__(self, model: DiffusionModel, steps: int | None = None, prompt: str = "", negative: str = "",
                 cfg_scale: float | None = None, checkpointing: bool = True):
        super().__init__()
        steps = default_steps(model) if steps is None else steps
        limit = step_limit(model)
        if not 1 <= steps <= limit:
            kind = "a few-step model" if limit < model.num_train_timesteps else "its schedule"
            raise InvalidInputError(f"{model.name} samples in 1 to {limit} steps ({kind}), got {steps} sampler steps; "
                                    f"ask for {min(limit, DEFAULT_NOISE_STEPS)}")
        if cfg_scale is not None and not (model.text_conditioned and math.isfinite(cfg_scale)):
            raise InvalidInputError(f"--cfg-scale applies to text-conditioned models; {model.name} is unconditional")
        self.model = model
        self.timesteps = trailing_timesteps(model.num_train_timesteps, steps)
        scale = 1.0 if cfg_scale is None else cfg_scale
        self.condition: TextCondition | None = model.condition(prompt, negative, scale)
        self.checkpointing = checkpointing
        self.known: tuple[torch.Tensor, torch.Tensor] | None = None  # (samples, sample-sized mask) kept outside
        config = model.scheduler_config
        self.clip_range = float(config.get("clip_sample_range", 1.0)) if config.get("clip_sample") else None

    @property
    def factor(self) -> int:
        """Output sides are multiples of the model's size factor."""
        return self.model.size_factor

    def random_latent(self, batch: int, height: int, width: int,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """Gaussian starting noise for `batch` images of `height` x `width` pixels."""
        shape = (batch, *self.model.sample_shape(width, height))
        return torch.randn(shape, generator=generator, device=self.device)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """The noise that the sampler maps back to (about) these images: DDIM inversion along its own timesteps,
        each step refined INVERSION_REFINE times."""
        return ddim_invert(self.model, self.model.from_image(images), self.timesteps[::-1], self.condition, 1.0,
                           INVERSION_REFINE)

    def _step(self, x: torch.Tensor, t: int, alpha_to: float) -> torch.Tensor:
        """One deterministic DDIM step from timestep t to noise level `alpha_to`; where the model's schedule clips
        the predicted clean sample (`clip_sample`, as its own sampler does), the noise is re-derived from the clipped
        one, as diffusers' DDIM does."""
        eps, alpha = self.model.predict_eps(x, t, self.condition), self.model.alpha_bar(t)
        if self.clip_range is not None:
            x0 = self.model.predict_x0(x, t, eps).clamp(-self.clip_range, self.clip_range)
            eps = (x - alpha**0.5 * x0) / (1 - alpha) ** 0.5
        return ddim_move(x, eps, alpha, alpha_to)

    @torch.no_grad()
    def keep_outside(self, images: torch.Tensor | None, mask: torch.Tensor | None) -> None:
        """Blended Diffusion inside the short sampler: at every step, outside `mask` (1 = change) the sample is
        replaced by `images` noised to that step with the starting noise, so the model draws the inside to fit the
        rest (None: sample freely)."""
        if images is None or mask is None:
            self.known = None
            return
        samples = self.model.from_image(images)
        self.known = samples, F.adaptive_max_pool2d(mask.to(samples), samples.shape[-2:])

    def _blend(self, x: torch.Tensor, noise: torch.Tensor, t: int) -> torch.Tensor:
        """The sample at timestep t with the kept images, noised with `noise`, outside the mask."""
        if self.known is None:
            return x
        samples, mask = self.known
        return x * mask + self.model.add_noise(samples, noise, t) * (1 - mask)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """[0, 1] images sampled from the noise by K DDIM steps, each checkpointed when gradients flow (and with
        the kept images blended in outside their mask before each step)."""
        x = latent
        for index, t in enumerate(self.timesteps):
            x = self._blend(x, latent, t)
            following = self.timesteps[index + 1] if index + 1 < len(self.timesteps) else None
            step = partial(self._step, t=t, alpha_to=1.0 if following is None else self.model.alpha_bar(following))
            x = checkpoint(step, x, use_reentrant=False) if self.checkpointing and torch.is_grad_enabled() else step(x)
        return self.model.to_image(x).clamp(0, 1)

    def latent_penalty(self, latent: torch.Tensor) -> torch.Tensor:
        """NORM_WEIGHT times the norm regulariser, keeping the noise Gaussian-like."""
        return NORM_WEIGHT * norm_penalty(latent)


def load_noise(name: str | Path, device: str | torch.device | None = None, **options) -> NoiseGenerator:
    """A diffusion model (hub id, folder or built-in name) as a noise generator; options go to NoiseGenerator."""
    return NoiseGenerator(load_diffusion(name, device), **options)
