"""Generators by kind: a new generator is one module plus one row here (imported only when used)."""

from __future__ import annotations

import importlib
from typing import Any

import torch

from generators.base import LatentGenerator
from guidance.errors import InvalidInputError

# kind -> "module:loader"; the loader takes (name, device=..., **options) and returns a LatentGenerator.
GENERATORS: dict[str, str] = {
    "vqgan": "generators.vqgan:load_vqgan",
    "pixels": "generators.pixels:load_pixels",
    "noise": "generators.diffusion.noise:load_noise",
}


def load_generator(kind: str, name: str, device: torch.device | str | None = None, **options: Any) -> LatentGenerator:
    """Load the generator `name` of a registered kind (e.g. ('vqgan', 'shapes-tiny'), ('pixels', 'fft'))."""
    if kind not in GENERATORS:
        raise InvalidInputError(f"unknown generator kind {kind!r}; choose one of {', '.join(GENERATORS)}")
    module, _, loader = GENERATORS[kind].partition(":")
    return getattr(importlib.import_module(module), loader)(name, device=device, **options)
