"""CLIP backends: each module wraps one library's models as a `CLIPEncoder` and loads them from the names it owns.

Adding a backend (e.g. Hugging Face transformers for `hf:` ids and save_pretrained folders) takes one module here,
with a `CLIPEncoder` subclass and a loader `(ClipRequest) -> CLIPEncoder`, and one `ClipSource` row in
`guidance.clip_models.CLIP_SOURCES`, placed before the rows whose names it must take over.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from ..encoder import CLIPEncoder

# Suffixes that make a name (or a pretrained tag) a local weights file rather than a model name.
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")


@dataclass(frozen=True)
class ClipRequest:
    """The arguments of one `load_clip` call, as its source's loader receives them (name stripped, paths as str)."""

    name: str
    pretrained: str | None = None
    architecture: str | dict | None = None
    cache_dir: str | None = None
    allow_pickle: bool = False


@dataclass(frozen=True)
class ClipSource:
    """One kind of CLIP model name: `matches(name, pretrained, architecture)` recognises it, `load` loads it,
    and `names()` lists the names it knows (for 'did you mean' suggestions)."""

    kind: str
    matches: Callable[[str, str | None, str | dict | None], bool]
    load: Callable[[ClipRequest], CLIPEncoder]
    names: Callable[[], Iterable[str]] = tuple


def is_checkpoint_file(path: str | None) -> bool:
    """Whether a name or pretrained tag is a local weights file: it has a weights suffix or is an existing file."""
    return isinstance(path, str) and (path.endswith(CHECKPOINT_SUFFIXES) or Path(path).is_file())


__all__ = ["CHECKPOINT_SUFFIXES", "ClipRequest", "ClipSource", "is_checkpoint_file"]
