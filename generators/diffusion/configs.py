"""Published architectures and tiny test ones, to build random-weight models offline (benchmarks and tests).

The real configs are those of google/ddpm-*-256 (`config.json`, `scheduler_config.json`) and of Stable
Diffusion 1.5 (`unet/`, `vae/`, `text_encoder/`, `scheduler/`); only the fields that differ from diffusers'
and transformers' defaults are spelled out.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel, UNet2DModel
from open_clip.tokenizer import bytes_to_unicode
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from generators.diffusion.models import ClipConditionedDiffusion, LatentDiffusion, PixelDiffusion
from guidance.clip_models import load_clip

DDPM_256_UNET: dict[str, Any] = {
    "sample_size": 256, "in_channels": 3, "out_channels": 3, "layers_per_block": 2,
    "block_out_channels": (128, 128, 256, 256, 512, 512),
    "down_block_types": ("DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"),
    "attention_head_dim": None, "downsample_padding": 0, "flip_sin_to_cos": False, "freq_shift": 1,
    "norm_eps": 1e-6, "norm_num_groups": 32,
}
DDPM_SCHEDULER: dict[str, Any] = {
    "_class_name": "DDPMScheduler", "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
    "num_train_timesteps": 1000, "clip_sample": True, "variance_type": "fixed_small",
}
SD15_UNET: dict[str, Any] = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280), "cross_attention_dim": 768, "attention_head_dim": 8,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
}
SD15_VAE: dict[str, Any] = {
    "sample_size": 512, "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
    "block_out_channels": (128, 256, 512, 512), "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4, "scaling_factor": 0.18215,
}
SD15_TEXT_ENCODER: dict[str, Any] = {
    "vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
    "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu", "projection_dim": 768,
}
SD15_SCHEDULER: dict[str, Any] = {
    "_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
    "clip_sample": False,
}

TINY_UNET: dict[str, Any] = {
    "sample_size": 32, "in_channels": 3, "out_channels": 3, "layers_per_block": 1, "block_out_channels": (32, 64),
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D"), "up_block_types": ("AttnUpBlock2D", "UpBlock2D"),
    "norm_num_groups": 8,
}
TINY_CONDITIONAL_UNET: dict[str, Any] = {
    "sample_size": 8, "in_channels": 4, "out_channels": 4, "layers_per_block": 1, "block_out_channels": (32, 64),
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"), "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 32, "attention_head_dim": 4, "norm_num_groups": 8,
}
TINY_VAE: dict[str, Any] = {
    "sample_size": 32, "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 1,
    "block_out_channels": (16, 32, 32, 32), "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4, "norm_num_groups": 8, "scaling_factor": 0.18215,
}
TINY_TEXT_ENCODER: dict[str, Any] = {
    "vocab_size": 514, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    "max_position_embeddings": 16, "projection_dim": 32,
    "bos_token_id": 512, "eos_token_id": 513, "pad_token_id": 513,  # the character tokenizer's special tokens
}

PIXEL_ARCHITECTURES = {"ddpm-256": (DDPM_256_UNET, DDPM_SCHEDULER), "tiny": (TINY_UNET, DDPM_SCHEDULER)}
LATENT_ARCHITECTURES = {
    "sd15": (SD15_UNET, SD15_VAE, SD15_TEXT_ENCODER, SD15_SCHEDULER),
    "tiny": (TINY_CONDITIONAL_UNET, TINY_VAE, TINY_TEXT_ENCODER, SD15_SCHEDULER),
}


def character_tokenizer(max_length: int) -> CLIPTokenizer:
    """A CLIP tokenizer without merges: one token per byte (514 ids), built offline for random-weight text encoders."""
    symbols = list(bytes_to_unicode().values())
    vocab = {symbol: index for index, symbol in enumerate(symbols + [s + "</w>" for s in symbols])}
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def random_pixel_model(architecture: str = "tiny", seed: int = 0) -> PixelDiffusion:
    """A PixelDiffusion with random weights: 'ddpm-256' (google/ddpm-*-256) or 'tiny'."""
    unet_config, scheduler_config = PIXEL_ARCHITECTURES[architecture]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        unet = UNet2DModel(**unet_config)
    return PixelDiffusion(unet, scheduler_config, f"random-{architecture}")


def random_latent_model(architecture: str = "tiny", seed: int = 0) -> LatentDiffusion:
    """A LatentDiffusion with random weights: 'sd15' (Stable Diffusion 1.5 sizes) or 'tiny'; a byte tokenizer."""
    unet_config, vae_config, text_config, scheduler_config = LATENT_ARCHITECTURES[architecture]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**unet_config)
        vae = AutoencoderKL(**vae_config)
        text_encoder = CLIPTextModel(CLIPTextConfig(**text_config))
    tokenizer = character_tokenizer(text_config["max_position_embeddings"])
    return LatentDiffusion(unet, vae, text_encoder, tokenizer, scheduler_config, f"random-{architecture}")



def random_clip_conditioned_model(seed: int = 0) -> ClipConditionedDiffusion:
    """A tiny pixel UNet with random weights that follows the built-in shapes-tiny CLIP's text embeddings (128 wide,
    as its timestep embedding is)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        unet = UNet2DModel(**TINY_UNET, class_embed_type="identity")
    return ClipConditionedDiffusion(unet, load_clip("shapes-tiny"), DDPM_SCHEDULER, "random-clip-conditioned",
                                    {"conditioning": {"clip": "shapes-tiny", "scale": 4.0}})
