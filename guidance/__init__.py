"""CLIP as a differentiable loss: models, prompts, cutouts, losses and scoring."""

from .backends.transformers import TransformersCLIPEncoder
from .clip_loss import CLIPLoss, DirectionalCLIPLoss, ImagePrompt
from .clip_models import BUILTIN_CLIP_MODELS, CLIPEncoder, OpenCLIPEncoder, load_clip, save_clip
from .cutouts import AUGMENT_PRESETS, Augment, MakeCutouts
from .errors import InvalidInputError, ModelUnavailableError, ToolkitError, first_line
from .images import load_image, png_output_path, read_recipe, save_png, tensor_to_pil
from .losses import cosine_dist_loss, directional_loss, range_loss, spherical_dist_loss, tv_loss
from .prompts import Prompt, parse_prompt, parse_prompts
from .scoring import clip_score, zero_shot_classify
from .templates import CHINESE_TEMPLATES, IMAGENET_TEMPLATES, choose_templates, contains_cjk

__all__ = [
    "AUGMENT_PRESETS", "Augment", "BUILTIN_CLIP_MODELS", "CHINESE_TEMPLATES", "CLIPEncoder", "CLIPLoss",
    "DirectionalCLIPLoss", "IMAGENET_TEMPLATES", "ImagePrompt", "InvalidInputError", "MakeCutouts",
    "ModelUnavailableError", "OpenCLIPEncoder", "Prompt", "ToolkitError", "TransformersCLIPEncoder",
    "choose_templates", "clip_score", "contains_cjk", "cosine_dist_loss", "directional_loss", "first_line",
    "load_clip", "load_image", "parse_prompt", "parse_prompts", "png_output_path", "range_loss", "read_recipe",
    "save_clip", "save_png", "spherical_dist_loss", "tensor_to_pil", "tv_loss", "zero_shot_classify",
]
