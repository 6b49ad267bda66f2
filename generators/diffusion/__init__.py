"""Diffusers models for CLIP guidance: pixel (google/ddpm-*, or CLIP-conditioned) and latent text-conditioned (Stable
Diffusion 1.x/2.x)."""

from generators.diffusion.configs import (character_tokenizer, random_clip_conditioned_model, random_latent_model,
                                          random_pixel_model)
from generators.diffusion.finetune import finetune_unet
from generators.diffusion.guidance import GUIDANCE_SCHEDULES, backward_eps, clamp_rms, guidance_weight, guided_eps
from generators.diffusion.loading import (BUILTIN_DIFFUSION_MODELS, KNOWN_DIFFUSION_MODELS, folder_info,
                                          known_diffusion_names, load_diffusion, save_diffusion)
from generators.diffusion.models import (ClipConditionedDiffusion, DiffusionModel, LatentDiffusion, PixelDiffusion,
                                         TextCondition)
from generators.diffusion.noise import NoiseGenerator, load_noise
from generators.diffusion.sampling import (SCHEDULERS, ddim_invert, ddim_move, ddim_sample, final_alpha,
                                           inversion_timesteps, make_scheduler, previous_timestep, renoise,
                                           scheduler_step, spaced_timesteps)

__all__ = [
    "BUILTIN_DIFFUSION_MODELS",
    "ClipConditionedDiffusion",
    "DiffusionModel",
    "GUIDANCE_SCHEDULES",
    "KNOWN_DIFFUSION_MODELS",
    "LatentDiffusion",
    "NoiseGenerator",
    "PixelDiffusion",
    "SCHEDULERS",
    "TextCondition",
    "backward_eps",
    "character_tokenizer",
    "clamp_rms",
    "folder_info",
    "ddim_invert",
    "ddim_move",
    "ddim_sample",
    "final_alpha",
    "finetune_unet",
    "guidance_weight",
    "guided_eps",
    "inversion_timesteps",
    "known_diffusion_names",
    "load_diffusion",
    "load_noise",
    "make_scheduler",
    "previous_timestep",
    "random_clip_conditioned_model",
    "random_latent_model",
    "random_pixel_model",
    "renoise",
    "save_diffusion",
    "scheduler_step",
    "spaced_timesteps",
]
