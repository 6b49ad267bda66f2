"""Measure the extra peak memory of CLIP-guided runs, to fit the memory estimate of guidance/memory.py.

Each setting runs in a fresh process: the pixels pipeline (its generator costs next to nothing) with the shipped
shapes-tiny CLIP (64-pixel input) on CPU, one thread; the figure is the process's peak RSS during a 2-step run
minus its RSS before the run, divided by cutn x CLIP input pixels (bytes per cutout pixel).

    python bench/memory_model.py --cutns 16 64 256 --sizes 64 256
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

import psutil


def measure(cutn: int, size: int) -> dict:
    """Peak extra memory of one run (in this process)."""
    import torch

    from guidance.memory import estimate_run_bytes
    from pipelines.pixels_clip import PixelsCLIPPipeline

    torch.set_num_threads(1)
    pipe = PixelsCLIPPipeline.from_pretrained("fft", ["shapes-tiny"], device="cpu")
    pipe("a red circle", size=size, steps=1, cutn=2, seed=0, progress=False, save_every=0)  # warm up
    before = psutil.Process().memory_info().rss
    pipe("a red circle", size=size, steps=2, cutn=cutn, seed=0, progress=False, save_every=0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    clip_size = pipe.clip_models[0][0].image_size
    extra = peak - before
    return {"cutn": cutn, "size": size, "clip_size": clip_size, "extra_mib": round(extra / 2**20, 1),
            "bytes_per_cutout_pixel": round(extra / (cutn * clip_size**2), 1),
            "estimate_mib": round(estimate_run_bytes(size, size, cutn, clip_size, generator="pixels") / 2**20, 1)}


def main() -> int:
    """Run each setting in its own process and print one JSON line per setting."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cutns", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64])
    parser.add_argument("--one", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(*args.one)))
        return 0
    for size in args.sizes:
        for cutn in args.cutns:
            result = subprocess.run([sys.executable, __file__, "--one", str(cutn), str(size)], capture_output=True,
                                    text=True, timeout=600)
            print(result.stdout.strip() or result.stderr.strip().splitlines()[-1], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
