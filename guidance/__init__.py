"""CLIP as a differentiable loss: models, prompts, cutouts, losses and scoring.

The names below are imported on first use (PEP 562), so that light modules such as `guidance.errors` and
`guidance.validation` (which the CLIs' parsers use) load without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> the submodule defining it
_EXPORTS = {
    "TransformersCLIPEncoder": "backends.transformers",
    **dict.fromkeys(("CLIPLoss", "DirectionalCLIPLoss", "ImagePrompt"), "clip_loss"),
    **dict.fromkeys(("BUILTIN_CLIP_MODELS", "CLIPEncoder", "OpenCLIPEncoder", "load_clip", "save_clip"), "clip_models"),
    **dict.fromkeys(("AUGMENT_PRESETS", "Augment", "MakeCutouts"), "cutouts"),
    **dict.fromkeys(("InvalidInputError", "ModelUnavailableError", "ToolkitError", "first_line"), "errors"),
    **dict.fromkeys(("attach_recipe", "convert_image", "load_image", "png_output_path", "read_image", "read_recipe",
                     "save_png", "tensor_to_pil"), "images"),
    **dict.fromkeys(("cosine_dist_loss", "directional_loss", "range_loss", "spherical_dist_loss", "tv_loss"), "losses"),
    **dict.fromkeys(("Prompt", "parse_prompt", "parse_prompts"), "prompts"),
    **dict.fromkeys(("clip_score", "zero_shot_classify"), "scoring"),
    **dict.fromkeys(("CHINESE_TEMPLATES", "IMAGENET_TEMPLATES", "choose_templates", "contains_cjk"), "templates"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import a public name's submodule when the name is first asked for."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public names, with the module's own."""
    return sorted({*globals(), *__all__})
