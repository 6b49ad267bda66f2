"""Benchmark the memory of cutting cutouts, forward and backward: kornia's crop_and_resize over the images copied
once per cutout (how `MakeCutouts.crop` cut before) against `roi_align` reading every box from the images.

Each setting runs in a fresh process. On a CPU the figure is the growth of the process's peak RSS over its RSS
just before the cut (the table's `peak MiB`); on CUDA, the peak allocated memory during the cut.

    python bench/cutouts_memory.py --size 512 --cutn 64 --json bench/results/cutouts_memory.json
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import torch
from runner import reset_peak_memory, run_settings, timing


def kornia_crop(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """The cut before roi_align: every image copied once per box, then kornia's bilinear crop_and_resize."""
    from kornia.geometry.transform import crop_and_resize

    batch, n = images.shape[0], boxes.shape[0]
    repeated = images.unsqueeze(0).expand(n, *images.shape).reshape(n * batch, *images.shape[1:])
    return crop_and_resize(repeated, boxes.to(images.dtype).repeat_interleave(batch, dim=0), (size, size),
                           mode="bilinear", align_corners=True)


def resident_mib() -> float:
    """This process's resident memory now, in MiB (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def measure(setting: dict) -> dict:
    """Seconds and memory of one cut, forward and backward, with the setting's implementation."""
    from guidance.cutouts import MakeCutouts

    torch.set_num_threads(setting["threads"])
    device = torch.device(setting["device"])
    torch.manual_seed(0)
    make = MakeCutouts(setting["cut_size"], cutn=setting["cutn"], augment="none")
    images = torch.rand(setting["batch"], 3, setting["size"], setting["size"], device=device, requires_grad=True)
    boxes = make.sample_boxes(setting["size"], setting["size"], setting["cutn"], device)
    cut = make.crop if setting["crop"] == "roi_align" else lambda x, b: kornia_crop(x, b, setting["cut_size"])
    reset_peak_memory(device)
    before = torch.cuda.memory_allocated() / 2**20 if device.type == "cuda" else resident_mib()
    started = time.perf_counter()
    cut(images, boxes).mean().backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
        extra = torch.cuda.max_memory_allocated() / 2**20 - before
    else:
        extra = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    row = {**setting, **timing(time.perf_counter() - started)}
    # the table's 'peak MiB': what the cut added to the peak, not the process's whole peak
    return {**row, "peak_memory_mib": round(extra, 1),
            "memory_kind": "cuda allocated growth" if device.type == "cuda" else "process RSS growth"}


def main() -> int:
    """Measure both implementations in fresh processes; print a table, the ratio, and optionally write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--cutn", type=int, default=64)
    parser.add_argument("--cut-size", type=int, default=224, help="CLIP's input side (ViT-B/32: 224)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    common = {"device": args.device, "size": args.size, "cutn": args.cutn, "cut_size": args.cut_size,
              "batch": args.batch, "threads": args.threads}
    settings = [{"crop": crop, **common} for crop in ("kornia", "roi_align")]
    columns = [("crop", "crop", 9), ("size", "size", 5), ("cutn", "cutn", 5), ("batch", "batch", 5)]
    results = run_settings(measure, settings, columns, args.json)
    print(f"roi_align uses {results[0]['peak_memory_mib'] / results[1]['peak_memory_mib']:.1f}x less memory "
          f"({results[0]['memory_kind']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
