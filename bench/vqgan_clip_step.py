"""Benchmark one VQGAN-CLIP optimisation step (decode, cutouts, CLIP forward and backward, optimiser).

Uses the real architectures with random weights (ViT-B-32 and the vqgan_imagenet_f16_16384 VQGAN), so it
needs no download. Each setting runs in a fresh process so the peak memory is its own. The timed loop is the
pipeline's own, timed step by step through its callback after `warmup` steps.

    python bench/vqgan_clip_step.py --sizes 128 256 --cutns 8 32 --steps 3 --json bench/results/cpu.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch


def build_pipeline(device: torch.device, clip_name: str, vqgan_name: str):
    """The VQGAN-CLIP pipeline on random-weight models of the real sizes."""
    from generators.vqgan import KNOWN_VQGANS, VQGAN, parse_config
    from guidance import load_clip
    from pipelines.vqgan_clip import VQGANCLIPPipeline

    torch.manual_seed(0)
    vqgan = VQGAN(parse_config(KNOWN_VQGANS[vqgan_name].config)).to(device)
    return VQGANCLIPPipeline(vqgan, [(load_clip(clip_name, device=device), 1.0)], vqgan_name)


def measure(setting: dict) -> dict:
    """Seconds per step (median over the timed steps) and peak memory for one (size, cutn, precision) setting."""
    device = torch.device(setting["device"])
    pipe = build_pipeline(device, setting["clip"], setting["vqgan"])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    stamps: list[float] = []
    pipe("a rocket on a launchpad", size=setting["size"], cutn=setting["cutn"], precision=setting["precision"],
         seed=0, steps=setting["warmup"] + setting["steps"], progress=False, save_every=1,
         callback=lambda step, images: stamps.append(time.perf_counter()))  # the callback syncs with the device
    seconds_per_step = statistics.median(b - a for a, b in zip(stamps[setting["warmup"] - 1:], stamps[setting["warmup"]:]))
    if device.type == "cuda":
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {**setting, "seconds_per_step": round(seconds_per_step, 4), "steps_per_second": round(1 / seconds_per_step, 3),
            "peak_memory_mib": round(peak_mib, 1), "memory_kind": "cuda allocated" if device.type == "cuda" else "process RSS"}


def machine() -> dict:
    """What ran the benchmark."""
    info = {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def main() -> int:
    """Run every setting in its own process; print a table and optionally write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--cutns", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--precisions", nargs="+", default=["fp32"])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per setting")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--clip", default="ViT-B-32")
    parser.add_argument("--vqgan", default="vqgan_imagenet_f16_16384")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    settings = [dict(device=args.device, size=size, cutn=cutn, precision=precision, steps=args.steps,
                     warmup=args.warmup, clip=args.clip, vqgan=args.vqgan)
                for precision in args.precisions for size in args.sizes for cutn in args.cutns]
    context = mp.get_context("spawn")
    results = []
    print(f"{'size':>6} {'cutn':>5} {'precision':>9} {'s/step':>8} {'steps/s':>8} {'peak MiB':>9}")
    for setting in settings:
        with context.Pool(1) as pool:
            row = pool.apply(measure, (setting,))
        results.append(row)
        print(f"{row['size']:>6} {row['cutn']:>5} {row['precision']:>9} {row['seconds_per_step']:>8.3f} "
              f"{row['steps_per_second']:>8.3f} {row['peak_memory_mib']:>9.0f}", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"machine": machine(), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
