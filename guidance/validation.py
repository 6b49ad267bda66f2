"""Settings checked for type, finiteness and range before any work, each refusal one line naming the fix."""

from __future__ import annotations

import math
import numbers
from typing import Iterable

from .errors import InvalidInputError

MAX_STEPS = 100_000  # optimisation / scheduler steps of one run
MAX_CUTN = 1024  # cutouts per step
MAX_SEED = 2**63 - 1  # seeds are 0 .. 2**63 - 1 (torch.Generator's range)


def check_number(name: str, value: float, *, low: float | None = None, high: float | None = None,
                 above: float | None = None) -> float:
    """A finite real number within [low, high] (or > above); `name` is the option as the user wrote it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidInputError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise InvalidInputError(f"{name} must be a finite number, got {value}")
    if above is not None and not value > above:
        raise InvalidInputError(f"{name} must be greater than {above:g}, got {value:g}")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = (f"between {low:g} and {high:g}" if low is not None and high is not None
                  else f"at least {low:g}" if low is not None else f"at most {high:g}")
        raise InvalidInputError(f"{name} must be {bounds}, got {value:g}")
    return value


def check_count(name: str, value: int, low: int, high: int) -> int:
    """An integer within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if not (isinstance(value, numbers.Real) and math.isfinite(value) and float(value).is_integer()):
            raise InvalidInputError(f"{name} must be a whole number, got {value!r}")
    if not low <= value <= high:
        raise InvalidInputError(f"{name} must be between {low} and {high}, got {value}")
    return int(value)


def check_seed(seed: int) -> int:
    """A seed within 0 .. 2**63 - 1."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise InvalidInputError(f"seed must be a whole number from 0 to 2**63 - 1, got {seed!r}")
    if not 0 <= seed <= MAX_SEED:
        raise InvalidInputError(f"seed {seed} is out of range; use a whole number from 0 to 2**63 - 1 ({MAX_SEED})")
    return int(seed)


def check_some_weight(weights: Iterable[float]) -> None:
    """Refuse prompts whose weights are all 0: nothing would guide the image."""
    weights = list(weights)
    if weights and not any(weights):
        raise InvalidInputError("every prompt weight is 0, so nothing would guide the image; "
                                "give at least one prompt a non-zero weight")
