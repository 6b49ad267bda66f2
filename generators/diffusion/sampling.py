"""Timesteps and steps: diffusers DDIM/DDPM schedulers on a model's noise schedule, and DDIM run both ways.

Models predict noise (see DiffusionModel.predict_eps), so schedulers are built for epsilon prediction whatever
the model was trained with, on evenly spaced ("leading") timesteps, where DDIM's previous step is `t - T // N`.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from diffusers import DDIMScheduler, DDPMScheduler

from generators.diffusion.models import DiffusionModel, TextCondition
from generators.names import SCHEDULER_NAMES

SCHEDULERS = dict(zip(SCHEDULER_NAMES, (DDIMScheduler, DDPMScheduler), strict=True))


def make_scheduler(kind: str, config: dict[str, Any], steps: int, invertible: bool = False) -> Any:
    """A `kind` scheduler ('ddim' or 'ddpm') on the model's schedule, set to `steps` steps.

    `invertible` turns off clipping of the predicted x0, so that DDIM inversion and generation mirror each other.
    """
    overrides: dict[str, Any] = {"prediction_type": "epsilon", "timestep_spacing": "leading", "thresholding": False}
    if invertible:
        overrides["clip_sample"] = False
    config = {key: value for key, value in config.items() if not key.startswith("_")}
    scheduler = SCHEDULERS[kind].from_config({**config, **overrides})
    scheduler.set_timesteps(steps)
    return scheduler


def scheduler_step(scheduler: Any, eps: torch.Tensor, t: int, x: torch.Tensor, eta: float,
                   generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One scheduler step from x at t: (sample at the previous timestep, predicted x0)."""
    if isinstance(scheduler, DDIMScheduler):
        out = scheduler.step(eps, t, x, eta=eta, generator=generator)
    else:
        out = scheduler.step(eps, t, x, generator=generator)
    return out.prev_sample, out.pred_original_sample


def final_alpha(scheduler: Any) -> float:
    """The noise level DDIM ends at after its last step (1.0, or alpha_bar at t=0 when `set_alpha_to_one` is off)."""
    return float(getattr(scheduler, "final_alpha_cumprod", 1.0))


def previous_timestep(timesteps: Sequence[int], index: int) -> int | None:
    """The timestep after `timesteps[index]` in a descending run, or None after the last step."""
    return timesteps[index + 1] if index + 1 < len(timesteps) else None


def ddim_move(x: torch.Tensor, eps: torch.Tensor, alpha_from: float, alpha_to: float) -> torch.Tensor:
    """Deterministic DDIM update of x from noise level `alpha_from` to `alpha_to` (either direction), given its noise."""
    x0 = (x - (1 - alpha_from) ** 0.5 * eps) / alpha_from**0.5
    return alpha_to**0.5 * x0 + (1 - alpha_to) ** 0.5 * eps


def renoise(x: torch.Tensor, alpha_from: float, alpha_to: float, generator: torch.Generator) -> torch.Tensor:
    """Self-recurrence's step back (FreeDoM's time travel): noise a sample at `alpha_from` to the noisier
    `alpha_to` with fresh Gaussian noise, as the forward process q(x_to | x_from) does."""
    ratio = alpha_to / alpha_from
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return ratio**0.5 * x + (1 - ratio) ** 0.5 * noise


def spaced_timesteps(start: int, end: int, count: int) -> list[int]:
    """`count` distinct integer timesteps evenly spaced from `start` to `end` (both included), in that order."""
    values = torch.linspace(start, end, max(count, 1)).round().long().tolist()
    return list(dict.fromkeys(values))


def inversion_timesteps(timesteps: Sequence[int], count: int | None = None) -> list[int]:
    """Ascending timesteps to invert along for a run on descending `timesteps`: the run's own in reverse (an exact
    mirror), or `count` evenly spaced ones ending at the run's first timestep."""
    if count is None:
        return list(timesteps)[::-1]
    return spaced_timesteps(timesteps[-1], timesteps[0], count)


@torch.no_grad()
def ddim_invert(model: DiffusionModel, x: torch.Tensor, timesteps: Sequence[int], condition: TextCondition | None,
                start_alpha: float, refine: int = 0) -> torch.Tensor:
    """Deterministic DDIM inversion: take a clean sample (at noise level `start_alpha`) up through ascending
    `timesteps`, so that DDIM generation on the same timesteps retraces the path.

    Each move uses the noise predicted at its target timestep; `refine` fixed-point iterations re-predict it
    at the moved sample, solving the implicit DDIM step more exactly (one more UNet pass per step each).
    """
    alpha = start_alpha
    for t in timesteps:
        target = model.alpha_bar(t)
        moved = ddim_move(x, model.predict_eps(x, t, condition), alpha, target)
        for _ in range(refine):
            moved = ddim_move(x, model.predict_eps(moved, t, condition), alpha, target)
        x, alpha = moved, target
    return x


def ddim_sample(model: DiffusionModel, x: torch.Tensor, timesteps: Sequence[int], condition: TextCondition | None,
                end_alpha: float) -> torch.Tensor:
    """Deterministic DDIM generation down through descending `timesteps` to noise level `end_alpha`; differentiable
    with respect to x and the UNet's weights (gradients flow when autograd is on)."""
    for index, t in enumerate(timesteps):
        following = previous_timestep(timesteps, index)
        eps = model.predict_eps(x, t, condition)
        x = ddim_move(x, eps, model.alpha_bar(t), end_alpha if following is None else model.alpha_bar(following))
    return x
