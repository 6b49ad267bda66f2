"""open_clip models whose text tower is a Hugging Face transformer (the multilingual `xlm-roberta-*-ViT-*` and
`nllb-clip-*` models): even with random weights they need that transformer's config and tokenizer from the hub,
so they load through the cache when offline and fail in one line when it lacks them."""

from __future__ import annotations

import contextlib

import open_clip

from ..errors import ModelUnavailableError, first_line
from ..network import HUB_HOST, host_reachable, hub_offline
from . import ClipRequest, is_checkpoint_file
from .openclip import OpenCLIPEncoder, load_named


def hf_text_model(name: str) -> str | None:
    """The hub name of an open_clip architecture's Hugging Face text tower, or None for a native text tower."""
    config = open_clip.get_model_config(name) or {}
    return config.get("text_cfg", {}).get("hf_model_name")


def has_hf_text_tower(name: str, pretrained: str | None, architecture: str | dict | None) -> bool:
    """Whether `name` is an open_clip architecture with a Hugging Face text tower (e.g. xlm-roberta-base-ViT-B-32)."""
    return (architecture is None or isinstance(architecture, str)) and hf_text_model(name) is not None


def load(request: ClipRequest) -> OpenCLIPEncoder:
    """The open_clip model, with its text tower's config and tokenizer from the cache (offline) or the hub."""
    offline = not host_reachable(HUB_HOST)
    try:
        with hub_offline() if offline else contextlib.nullcontext():
            return load_named(request)
    except OSError as error:
        reason = "offline and not in the cache" if offline else f"download failed: {first_line(error)}"
        weights = "" if request.pretrained is None or is_checkpoint_file(request.pretrained) else f":{request.pretrained}"
        raise ModelUnavailableError(
            f"CLIP model {request.name}{weights} needs the config and tokenizer of its text tower "
            f"{hf_text_model(request.name)} from the Hugging Face hub ({reason}); run it once online to cache them"
        ) from None
