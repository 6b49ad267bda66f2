"""Generators by kind: a new generator is one module plus one row in `generators.names.GENERATORS` (imported only
when used)."""

from __future__ import annotations

import importlib
from typing import Any

import torch

from generators.base import LatentGenerator
from generators.names import GENERATORS
from guidance.errors import InvalidInputError



def load_generator(kind: str, name: str, device: torch.device | str | None = None, **options: Any) -> LatentGenerator:
    """Load the generator `name` of a registered kind (e.g. ('vqgan', 'shapes-tiny'), ('pixels', 'fft'))."""
    if kind not in GENERATORS:
        raise InvalidInputError(f"unknown generator kind {kind!r}; choose one of {', '.join(GENERATORS)}")
    module, _, loader = GENERATORS[kind].partition(":")
    return getattr(importlib.import_module(module), loader)(name, device=device, **options)
