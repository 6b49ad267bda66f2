"""Benchmark one VQGAN-CLIP optimisation step (decode, cutouts, CLIP forward and backward, optimiser).

Uses the real architectures with random weights (ViT-B-32 and the vqgan_imagenet_f16_16384 VQGAN), so it
needs no download. Each setting runs in a fresh process so the peak memory is its own. The timed loop is the
pipeline's own, timed step by step through its callback after `warmup` steps.

    python bench/vqgan_clip_step.py --sizes 128 256 --cutns 8 32 --steps 3 --json bench/results/cpu.json
    python bench/vqgan_clip_step.py --shipped --sizes 256 --cutns 32 --num-images 1 4 8   # batches, tiny models
    python bench/vqgan_clip_step.py --sizes 256 --cutns 32 --precisions fp32 bf16 --interleave 3

With `--interleave R` the precisions of a (size, cutn) setting share one process and model and take turns, R rounds
of one run each, so a shared machine's changing load hits them alike; s/step is the median over all rounds.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path

import torch
from runner import machine, peak_memory, reset_peak_memory, run_settings, timing


def build_pipeline(device: torch.device, clip_name: str, vqgan_name: str, shipped: bool = False):
    """The VQGAN-CLIP pipeline on random-weight models of the real sizes, or on the shipped models as they are."""
    from generators.vqgan import KNOWN_VQGANS, VQGAN, parse_config
    from guidance import load_clip
    from pipelines.vqgan_clip import VQGANCLIPPipeline

    if shipped:
        return VQGANCLIPPipeline.from_pretrained(vqgan_name, [clip_name], device)

    torch.manual_seed(0)
    vqgan = VQGAN(parse_config(KNOWN_VQGANS[vqgan_name].config)).to(device)
    return VQGANCLIPPipeline(vqgan, [(load_clip(clip_name, device=device), 1.0)], vqgan_name)


def step_seconds(pipe, setting: dict, precision: str) -> list[float]:
    """Seconds of each timed step of one run (after `warmup` steps)."""
    stamps: list[float] = []
    pipe("a rocket on a launchpad", size=setting["size"], cutn=setting["cutn"], precision=precision,
         num_images=setting.get("num_images", 1), seed=0, steps=setting["warmup"] + setting["steps"], progress=False, save_every=1,
         callback=lambda step, images: stamps.append(time.perf_counter()))  # the callback syncs with the device
    return [b - a for a, b in zip(stamps[setting["warmup"] - 1:], stamps[setting["warmup"]:])]


def measure(setting: dict) -> dict:
    """Seconds per step (median over the timed steps) and peak memory for one (size, cutn, precision) setting."""
    device = torch.device(setting["device"])
    pipe = build_pipeline(device, setting["clip"], setting["vqgan"], setting["shipped"])
    reset_peak_memory(device)
    seconds_per_step = statistics.median(step_seconds(pipe, setting, setting["precision"]))
    return {**setting, **timing(seconds_per_step), "images_per_second": round(setting["num_images"] / seconds_per_step, 3),
            **peak_memory(device)}


def measure_interleaved(setting: dict) -> list[dict]:
    """Each precision of `setting["precisions"]` in turn, `rounds` times, on one pipeline: a row per precision
    (median s/step over every round; the peak memory is the process's, shared by the precisions)."""
    device = torch.device(setting["device"])
    pipe = build_pipeline(device, setting["clip"], setting["vqgan"], setting["shipped"])
    seconds: dict[str, list[float]] = {precision: [] for precision in setting["precisions"]}
    for _ in range(setting["rounds"]):
        for precision in seconds:
            seconds[precision] += step_seconds(pipe, setting, precision)
    memory = peak_memory(device)
    base = {key: value for key, value in setting.items() if key != "precisions"}
    return [{**base, "precision": precision, **timing(statistics.median(values)), **memory,
             "step_seconds": [round(value, 3) for value in values]} for precision, values in seconds.items()]


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
    parser.add_argument("--num-images", type=int, nargs="+", default=[1], help="images optimised together")
    parser.add_argument("--shipped", action="store_true",
                        help="load --clip and --vqgan as shipped models (e.g. shapes-tiny) instead of random weights")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--interleave", type=int, default=0, metavar="ROUNDS",
                        help="run the precisions of each setting in one process, taking turns for this many rounds")
    args = parser.parse_args()
    columns = [("size", "size", 6), ("cutn", "cutn", 5), ("precision", "precision", 9)]
    if args.interleave:
        settings = [dict(device=args.device, size=size, cutn=cutn, precisions=args.precisions, steps=args.steps,
                         warmup=args.warmup, clip=args.clip, vqgan=args.vqgan, rounds=args.interleave,
                         shipped=args.shipped)
                    for size in args.sizes for cutn in args.cutns]
        rows = []
        for setting in settings:  # one fresh process per (size, cutn); run_settings takes one row per process
            with mp.get_context("spawn").Pool(1) as pool:
                rows += pool.apply(measure_interleaved, (setting,))
        for row in rows:
            print(f"{row['size']:>6} {row['cutn']:>5} {row['precision']:>9} {row['seconds_per_step']:>8.3f} s/step "
                  f"{row['steps_per_second']:>7.3f} steps/s  {row['peak_memory_mib']:>8.1f} MiB  steps {row['step_seconds']}")
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps({"machine": machine(), "results": rows}, indent=2))
        return 0
    settings = [dict(device=args.device, size=size, cutn=cutn, precision=precision, steps=args.steps,
                     warmup=args.warmup, clip=args.clip, vqgan=args.vqgan, num_images=num_images, shipped=args.shipped)
                for precision in args.precisions for size in args.sizes for cutn in args.cutns
                for num_images in args.num_images]
    run_settings(measure, settings, [*columns, ("images", "num_images", 6), ("images/s", "images_per_second", 9)],
                 args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
