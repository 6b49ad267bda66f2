"""How much memory a CLIP-guided run will need, estimated before it starts, and a clear refusal when it will not fit.

The model is simple and errs high: the cutouts dominate (each one is augmented, resized to the CLIP input and
kept with its activations for the backward pass), then the image itself through the generator and its gradient.
Coefficients are fitted on measurements (bench/memory_model.py; the README's benchmark table).
"""

from __future__ import annotations

import psutil
import torch

from .errors import ToolkitError

# Extra bytes per cutout per CLIP-input pixel (fp32, forward and backward). Measured with bench/memory_model.py
# (shapes-tiny ResNet, 64 px input, CPU): 800-970 B at 16-512 cutouts; the issue's --cutn 10000 run (20.9 GB)
# gives 510 B.
BYTES_PER_CUTOUT_PIXEL = 1000
# Extra bytes per output pixel per image for the generator's decode and its gradient, by what the pipeline runs:
# about 110 B for the pixels generator (bench/memory_model.py, 64 to 512 px); the README's benchmark table gives
# about 14 kB for the f16 VQGAN decoder and about 40 kB for a guided diffusion UNet (pixel or latent).
BYTES_PER_IMAGE_PIXEL = {"pixels": 200, "vqgan": 20_000, "diffusion": 45_000}
# Share of the fp32 activation bytes a bf16 or fp16 autocast run keeps: VQGAN-CLIP (ViT-B-32, f16_16384) at 256x256
# with 32 cutouts grew by 1.0 GiB per image in bf16 from 1 to 4 images (bench/vqgan_clip_step.py --num-images),
# where the fp32 estimate is 2.7 GiB; half errs high.
LOW_PRECISION_SHARE = 0.5
# Share of the available memory a run may plan to use.
HEADROOM = 0.9


def estimate_run_bytes(width: int, height: int, cutn: int, clip_size: int, batch: int = 1,
                       generator: str = "vqgan", cutn_batches: int = 1, precision: str = "fp32") -> int:
    """Estimated extra peak memory of one guided run's steps, in bytes (models already loaded); `generator` is a
    key of BYTES_PER_IMAGE_PIXEL (unknown ones count as the costliest); `precision` the resolved autocast
    precision (bf16 and fp16 keep about half the activation bytes).

    `cutn` is the cutouts of one batch: with `cutn_batches` > 1 each batch's backward frees its activations before
    the next batch, so the cutout term stays that of one batch; only the images' gradient, kept across the batches
    (3 fp32 values per pixel), is added."""
    per_pixel = BYTES_PER_IMAGE_PIXEL.get(generator, max(BYTES_PER_IMAGE_PIXEL.values()))
    activations = cutn * clip_size**2 * BYTES_PER_CUTOUT_PIXEL + width * height * per_pixel
    if precision in ("bf16", "fp16"):
        activations *= LOW_PRECISION_SHARE
    accumulated = 3 * 4 * width * height if cutn_batches > 1 else 0
    return round(batch * (activations + accumulated))


def available_bytes(device: torch.device) -> int:
    """Free memory where the run's tensors live: the GPU's free memory, or the machine's available RAM."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    return int(psutil.virtual_memory().available)


def check_memory(needed: int, device: torch.device, what: str, lower: str) -> None:
    """Refuse, in one line naming the settings to lower, a run whose estimate exceeds the memory available."""
    available = available_bytes(device)
    if needed > HEADROOM * available:
        where = "GPU memory" if device.type == "cuda" else "RAM"
        raise ToolkitError(f"{what} would need about {needed / 2**30:.1f} GiB but only {available / 2**30:.1f} GiB of "
                           f"{where} is available; lower {lower}")
