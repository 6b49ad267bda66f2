"""Benchmark one CLIP-guided diffusion step: UNet forward, predicted x0, decode (the VAE for latent models),
cutouts, CLIP, the backward pass of all of it to x_t, and the scheduler step.

Uses the real architectures with random weights, so it needs no download: google/ddpm-*-256 (a pixel
UNet2DModel at 256x256) and Stable Diffusion 1.5 (UNet2DConditionModel + AutoencoderKL at 512x512, so 64x64
latents, with classifier-free guidance as the pipeline runs it by default), each guided by ViT-B-32. Each
setting runs in a fresh process so the peak memory is its own. `--config tiny` runs tiny models in seconds on
a CPU, to check the script.

    python bench/diffusion_step.py --cutns 16 32 --precisions fp32 bf16 --json bench/results/diffusion.json
    python bench/diffusion_step.py --kinds pixel --num-images 1 4 8   # a batch guided in one step: images/s
    python bench/diffusion_step.py --config tiny --steps 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from runner import peak_memory, reset_peak_memory, run_settings, timing

TINY_CLIP = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
             "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2}}
# (model kind, architecture, image side, CLIP model) per setting
CONFIGS = {
    "full": [("pixel", "ddpm-256", 256, "ViT-B-32"), ("latent", "sd15", 512, "ViT-B-32")],
    "tiny": [("pixel", "tiny", 32, "tiny"), ("latent", "tiny", 64, "tiny")],
}
PROMPT = "a rocket on a launchpad"


def build(setting: dict, device: torch.device):
    """The random-weight diffusion model and the guidance loss the pipeline would use for this setting."""
    from generators.diffusion import random_latent_model, random_pixel_model
    from guidance import CLIPLoss, MakeCutouts, load_clip
    from pipelines.clip_guided_diffusion import GuidanceLoss

    torch.manual_seed(0)
    build_model = random_pixel_model if setting["kind"] == "pixel" else random_latent_model
    model = build_model(setting["architecture"]).to(device)
    clip = load_clip(setting["clip"], architecture=TINY_CLIP if setting["clip"] == "tiny" else None, device=device)
    cutouts = MakeCutouts(clip.image_size, cutn=setting["cutn"], cut_pow=0.5)
    loss = GuidanceLoss(CLIPLoss([clip], PROMPT, cutouts=cutouts), 1000.0, 150.0, 50.0, 0.0, None, None)
    return model, model.condition(PROMPT, "", model.default_cfg_scale), loss


def measure(setting: dict) -> dict:
    """Seconds per guided step (median over the timed steps) and peak memory for one setting."""
    from generators.diffusion import guided_eps, make_scheduler, scheduler_step
    from guidance.runtime import autocast, prepare_device

    device = torch.device(setting["device"])
    prepare_device(device)
    model, condition, loss = build(setting, device)
    scheduler = make_scheduler("ddim", model.scheduler_config, 50)
    timesteps = [int(t) for t in scheduler.timesteps]
    side = setting["size"]
    x = torch.randn((setting["num_images"], *model.sample_shape(side, side)), device=device, generator=torch.Generator(device).manual_seed(0))
    reset_peak_memory(device)
    seconds = []
    for index in range(setting["warmup"] + setting["steps"]):
        t = timesteps[10 + index % 30]  # mid-schedule steps
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        with autocast(device, setting["precision"]):
            eps, _, _ = guided_eps(model, x, t, condition, loss, clamp_grad=0.05)
        x, _ = scheduler_step(scheduler, eps, t, x, 0.0, None)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
    per_step = statistics.median(seconds[setting["warmup"]:])
    return {**setting, **timing(per_step), "images_per_second": round(setting["num_images"] / per_step, 3),
            **peak_memory(device)}


def main() -> int:
    """Run every setting in its own process; print a table and optionally write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="full",
                        help="full: ddpm-256 at 256 and SD 1.5 at 512 with ViT-B-32; tiny: a quick check of the script")
    parser.add_argument("--kinds", nargs="+", choices=("pixel", "latent"), default=["pixel", "latent"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--cutns", type=int, nargs="+", default=[16])
    parser.add_argument("--precisions", nargs="+", default=["fp32"])
    parser.add_argument("--num-images", type=int, nargs="+", default=[1], help="images guided together in one step")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per setting")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    settings = [dict(device=args.device, model=f"{kind}:{architecture}", kind=kind, architecture=architecture,
                     size=size, clip=clip, cutn=cutn, precision=precision, steps=args.steps, warmup=args.warmup,
                     num_images=num_images)
                for kind, architecture, size, clip in CONFIGS[args.config] if kind in args.kinds
                for precision in args.precisions for cutn in args.cutns for num_images in args.num_images]
    run_settings(measure, settings, [("model", "model", 16), ("size", "size", 5), ("cutn", "cutn", 5),
                                     ("precision", "precision", 9), ("images", "num_images", 6),
                                     ("images/s", "images_per_second", 9)], args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
