"""Taming-transformers-compatible VQGAN without the taming or pytorch-lightning packages."""

from generators.vqgan.autograd import clamp_with_grad, replace_grad
from generators.vqgan.config import VQGANConfig, parse_config, taming_config, tiny_vqgan_config
from generators.vqgan.loading import BUILTIN_VQGANS, KNOWN_VQGANS, KnownVQGAN, known_vqgan_names, load_vqgan, save_vqgan
from generators.vqgan.model import VQGAN
from generators.vqgan.quantize import nearest_codes, quantize_straight_through

__all__ = [
    "BUILTIN_VQGANS",
    "KNOWN_VQGANS",
    "VQGAN",
    "KnownVQGAN",
    "VQGANConfig",
    "clamp_with_grad",
    "known_vqgan_names",
    "load_vqgan",
    "nearest_codes",
    "parse_config",
    "quantize_straight_through",
    "replace_grad",
    "save_vqgan",
    "taming_config",
    "tiny_vqgan_config",
]
