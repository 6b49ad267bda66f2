"""Loading CLIP models from any source (a table of sources, each handled by a backend), and saving them."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from .backends import ClipRequest, ClipSource, is_checkpoint_file, openclip
from .backends import openclip_hf_text
from .backends import transformers as hf_transformers
from .backends.openclip import OpenCLIPEncoder
from .encoder import CLIPEncoder, check_images, check_texts
from .errors import InvalidInputError, ModelUnavailableError
from .prompts import parse_prompt

# Name prefixes of hub repositories, whose names hold no pretrained tag: open_clip's and transformers'.
HUB_PREFIXES = ("hf-hub:", hf_transformers.HUB_PREFIX)

WEIGHTS_DIR = Path(__file__).parent / "weights"

# Models that ship inside the package: name -> open_clip safetensors file holding weights and config.
BUILTIN_CLIP_MODELS: dict[str, Path] = {
    "shapes-tiny": WEIGHTS_DIR / "shapes-tiny-clip.safetensors",
    "shapes-tiny-zh": WEIGHTS_DIR / "shapes-tiny-zh-clip.safetensors",  # bilingual: English and Chinese
}

__all__ = ["BUILTIN_CLIP_MODELS", "CLIP_SOURCES", "CLIPEncoder", "ClipRequest", "ClipSource", "OpenCLIPEncoder",
           "check_images", "check_texts", "clip_source", "load_builtin", "load_clip", "load_clip_ensemble",
           "parse_clip_spec", "save_clip"]


def load_builtin(request: ClipRequest) -> CLIPEncoder:
    """A model shipped inside the package, by name."""
    path = BUILTIN_CLIP_MODELS[request.name]
    if not path.is_file():
        raise ModelUnavailableError(f"built-in CLIP model '{request.name}' is missing its file {path}; reinstall the package")
    return openclip.load_checkpoint(path, request.architecture, request.name, request.allow_pickle)


# Every kind of CLIP model name, in the order load_clip tries them; the first row that matches loads the model.
CLIP_SOURCES: list[ClipSource] = [
    ClipSource("built-in", lambda name, pretrained, architecture: name in BUILTIN_CLIP_MODELS, load_builtin,
               names=lambda: list(BUILTIN_CLIP_MODELS)),
    ClipSource("checkpoint file", lambda name, pretrained, architecture: is_checkpoint_file(name), openclip.load_file),
    ClipSource("open_clip config", lambda name, pretrained, architecture: isinstance(architecture, dict),
               openclip.load_config),
    ClipSource("hf-hub", lambda name, pretrained, architecture: name.startswith("hf-hub:"), openclip.load_hub),
    ClipSource("transformers hub id", hf_transformers.is_hub_id, hf_transformers.load_hub),
    ClipSource("transformers folder", hf_transformers.is_folder, hf_transformers.load_folder),
    ClipSource("open_clip with a Hugging Face text tower", openclip_hf_text.has_hf_text_tower, openclip_hf_text.load),
    ClipSource("open_clip", openclip.is_named, openclip.load_named, names=openclip.known_names),
]


def clip_source(name: str, pretrained: str | None = None, architecture: str | dict | None = None) -> ClipSource:
    """The first row of CLIP_SOURCES that matches, or a one-line error suggesting the closest known names."""
    for source in CLIP_SOURCES:
        if source.matches(name, pretrained, architecture):
            return source
    raise openclip.unknown_architecture(name, [known for source in CLIP_SOURCES for known in source.names()])


def load_clip(name: str, pretrained: str | None = None, device: str | torch.device | None = None, *,
              architecture: str | dict | None = None, cache_dir: str | None = None,
              allow_pickle: bool = False) -> CLIPEncoder:
    """Load a CLIP model: an open_clip architecture (+ pretrained tag or local file), an `hf-hub:` repo,
    a transformers `hf:OWNER/NAME` hub id or `save_pretrained` folder, a built-in name such as `shapes-tiny`,
    or a local checkpoint file (with `architecture` if it holds no config).

    `pretrained=None` with an architecture name, or an `architecture` config dict with a plain name, gives
    random weights and downloads nothing. The name's kind picks the row of CLIP_SOURCES that loads it.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    name = str(name) if isinstance(name, Path) else name  # a checkpoint path given as a Path
    pretrained = str(pretrained) if isinstance(pretrained, Path) else pretrained
    if not isinstance(name, str) or not name.strip():
        raise InvalidInputError("CLIP model name is empty; give an open_clip architecture such as 'ViT-B-32'")
    request = ClipRequest(name.strip(), pretrained, architecture, cache_dir, allow_pickle)
    source = clip_source(request.name, pretrained, architecture)
    return source.load(request).to(device)


def save_clip(clip: CLIPEncoder, path: str | Path) -> Path:
    """Save a CLIP model loadable by `load_clip(path)` (open_clip models: safetensors with config and mean/std)."""
    if not isinstance(clip, CLIPEncoder):
        raise InvalidInputError(f"save_clip takes a model from load_clip(), got {type(clip).__name__}")
    return clip.save(path)


def parse_clip_spec(spec: str) -> tuple[str, str | None, float]:
    """Split `NAME[:PRETRAINED][:WEIGHT]` (e.g. `ViT-B-32:openai:0.5`, `RN50:weights.pt`, `shapes-tiny`).

    The weight follows the prompt rule: a trailing number after a ':' that does not follow a digit.
    """
    prefix = next((p for p in HUB_PREFIXES if spec.startswith(p)), "")
    parsed = parse_prompt(spec[len(prefix):])
    name, _, pretrained = parsed.text.partition(":")
    if parsed.stop != float("-inf"):
        raise InvalidInputError(f"CLIP model spec {spec!r} has too many ':' fields; use NAME[:PRETRAINED][:WEIGHT]")
    if prefix and pretrained:
        raise InvalidInputError(f"{prefix.rstrip(':')} models carry their own weights; drop ':{pretrained}' from {spec!r}")
    return prefix + name.strip(), pretrained.strip() or None, parsed.weight


def load_clip_ensemble(specs: Sequence[str], device: str | torch.device | None = None) -> list[tuple[CLIPEncoder, float]]:
    """Load `NAME[:PRETRAINED][:WEIGHT]` specs as (model, weight) pairs for an ensemble."""
    if not specs:
        raise InvalidInputError("no CLIP model given; e.g. --clip-model ViT-B-32:openai")
    members = []
    for spec in specs:
        name, pretrained, weight = parse_clip_spec(spec)
        members.append((load_clip(name, pretrained, device), weight))
    return members
