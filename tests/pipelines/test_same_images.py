"""The restructure changed no behaviour: the same seed gives the same image as the PNGs recorded before it.

The PNGs in tests/data/golden were made by the pipelines before the generator interface and the pipeline
registry existed (VQGAN-CLIP and guided diffusion on the shipped shapes-tiny models, with the red circle and
masks stored beside them as inputs). vqgan-generate.png and vqgan-directional.png were recorded again when the
cutouts moved to roi_align (one crop per box instead of one image copy per cutout): the crop is the same formula
(equal to kornia's crop_and_resize to 1e-13 in float64) but rounds differently in float32 (about 1e-4), and 12
and 8 optimisation steps grow that to at most 21/255 and 10/255 on a pixel (mean 1.2 and 0.5); with the old
crop patched back in, the old PNGs still match bit for bit. diffusion-masked.png and diffusion-invert.png were
recorded again (one torch thread, as the tests run) when masked and --source-text edits began to use 5 steps of
backward guidance by default: before, those edits kept the source's colour (0% target colour on the meaning
benchmark); the red circle now turns blue in diffusion-invert. The three vqgan-*.png were recorded again when the
latent-optimisation pipelines' default augmentation became 'geometric' (the field's set without its colour
jitter, chosen by bench/meaning.py); called with augment='default', the pipeline still gives the previous PNGs
bit for bit. vqgan-masked.png was recorded again when an edit inside a mask began to start from the best of 8
starts (the region as it is and recoloured through 7 hues); called with candidates=1, the pipeline still gives
the previous PNG bit for bit. diffusion-masked.png was recorded again when the sampler's masked edits began to
start from the best of 9 starts (the region as it is, its 7 hue turns and its lightness flipped): it now turns the
red circle's square blue, where it stayed red; called with candidates=1, the pipeline still gives the previous PNG
bit for bit. It was recorded again when the sampler's pool added the region tinted to 8 hues halfway between the
turns (17 starts; the hue turns' angles now come from float64 fractions, which moves the 9-start image too);
called with candidates=1, the pipeline still gives the PNG from before the pool bit for bit. vqgan-masked.png
was recorded again when the latent loops' default pool became the same 17 starts; called with candidates=8, the
pipeline still gives the previous PNG bit for bit.

The PNGs are kept per CPU kind (`machine_kind`: vendor and widest matrix instructions), because float order differs
between kinds and these short guided runs amplify it: on an AMD EPYC (AVX-512, no AMX) the PNGs recorded on the
Intel Xeon with AMX came back with vqgan-directional 29/255 off at most (mean 2.2) and diffusion-invert 162/255
(mean 34), while 1 against 2 torch threads on one machine moves diffusion-invert about as much. So intel-amx/ holds
the Intel PNGs above and amd-avx512/ the AMD ones, recorded with `python tests/pipelines/test_same_images.py
--record` (one thread). A case with no PNG for this machine's kind is skipped, saying so. When backward guidance
moved to a coarse grid (generators.diffusion.guidance.BACKWARD_DOWNSCALE), diffusion-masked and diffusion-invert
were recorded again on the AMD machine; their Intel PNGs were removed, as no Intel machine was at hand to record
them (called with downscale 1, the pipeline still gives the AMD PNGs of the previous code bit for bit). When a
directional edit without a mask began to start from the best of its 17 whole-image recolourings, vqgan-directional
and diffusion-invert were recorded again on the AMD machine (diffusion-invert's red circle now comes out blue at 10
steps, where it stayed red), and the Intel vqgan-directional was removed; called with candidates=1, the pipeline
still gives the previous AMD PNGs bit for bit. diffusion-invert was recorded again on the AMD machine when the
sampler's unmasked directional edit began to descend the target text's own loss too (pipelines.common.TARGET_WEIGHT;
its circle stays blue, 70/255 off at most, mean 15). vqgan-directional was recorded again on the AMD machine when
the latent loops' unmasked directional edit began to descend the target text's loss at 0.3 and to hold to the source
at an L1 weight of 0.3, not 1 (pipelines.latent_optimization.WHOLE_IMAGE_TARGET_WEIGHT and WHOLE_IMAGE_FIDELITY): its
red circle now comes out blue, where it came out yellow and green; with the target weight patched to 0 and called
with init_weight=1, the pipeline still gives the previous PNG bit for bit."""

from __future__ import annotations

import platform
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from pipelines.clip_guided_diffusion import CLIPGuidedDiffusionPipeline
from pipelines.vqgan_clip import VQGANCLIPPipeline

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden"  # the inputs; the PNGs in one folder per CPU kind
COMMON = {"progress": False, "save_every": 0, "cutn": 8}


def load_vqgan_clip() -> VQGANCLIPPipeline:
    """VQGAN-CLIP on the shipped shapes models."""
    return VQGANCLIPPipeline.from_pretrained("shapes-tiny", ["shapes-tiny"], device="cpu")


def load_diffusion() -> CLIPGuidedDiffusionPipeline:
    """Guided diffusion on the shipped shapes models."""
    return CLIPGuidedDiffusionPipeline.from_pretrained("shapes-tiny", ["shapes-tiny"], device="cpu")


vqgan_clip = pytest.fixture(scope="module")(load_vqgan_clip)
diffusion = pytest.fixture(scope="module")(load_diffusion)


SOURCE, MASK64, MASK32 = GOLDEN / "red-circle.png", GOLDEN / "mask64.png", GOLDEN / "mask32.png"
VQGAN_CASES: dict[str, Callable] = {
    "vqgan-generate": lambda p: p("a green triangle", size=64, steps=12, seed=3, **COMMON),
    "vqgan-masked": lambda p: p("a blue square", size=64, steps=8, seed=4, init_image=SOURCE, mask=MASK64, **COMMON),
    "vqgan-directional": lambda p: p("a blue circle", size=64, steps=8, seed=5, init_image=SOURCE,
                                     source_text="a red circle", **COMMON),
}
DIFFUSION_CASES: dict[str, Callable] = {
    "diffusion-generate": lambda p: p("a red circle", steps=10, seed=6, **COMMON),
    "diffusion-masked": lambda p: p("a blue square", steps=10, seed=7, init_image=SOURCE, mask=MASK32, size=32,
                                    **COMMON),
    "diffusion-invert": lambda p: p("a blue circle", steps=10, seed=8, init_image=SOURCE,
                                    source_text="a red circle", **COMMON),
}


def machine_kind() -> str:
    """The CPU kind that float results depend on: vendor and widest matrix instructions ('intel-amx', 'amd-avx512')."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine().lower() or "unknown"
    vendor = "intel" if "GenuineIntel" in info else "amd" if "AuthenticAMD" in info else platform.machine().lower()
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    widest = next((isa for isa, flag in (("amx", "amx_bf16"), ("avx512", "avx512f"), ("avx2", "avx2"))
                   if flag in flags), "base")
    return f"{vendor}-{widest}"


def recorded(name: str) -> Path:
    """The PNG recorded for case `name` on this machine's kind; skips the test when there is none."""
    path = GOLDEN / machine_kind() / f"{name}.png"
    if not path.is_file():
        pytest.skip(f"no {name}.png recorded on a {machine_kind()} CPU; record it there with "
                    f"`python tests/pipelines/test_same_images.py --record`")
    return path


def assert_same_image(name: str, image: Image.Image) -> None:
    """Equal to the PNG recorded on this CPU kind: bit-exact on the recording machine, at most 2/255 on any pixel
    on another machine of its kind."""
    expected = np.asarray(Image.open(recorded(name)).convert("RGB")).astype(int)
    got = np.asarray(image.convert("RGB")).astype(int)
    assert got.shape == expected.shape
    difference = np.abs(got - expected)
    assert difference.max() <= 2 and difference.mean() < 0.05, (name, difference.max(), difference.mean())


@pytest.mark.parametrize("name", VQGAN_CASES)
def test_vqgan_clip_gives_the_recorded_image(vqgan_clip, name):
    assert_same_image(name, VQGAN_CASES[name](vqgan_clip).images[0])


@pytest.mark.parametrize("name", DIFFUSION_CASES)
def test_guided_diffusion_gives_the_recorded_image(diffusion, name):
    assert_same_image(name, DIFFUSION_CASES[name](diffusion).images[0])


def record() -> None:
    """Record every case's PNG for this machine's CPU kind (one torch thread, as the tests run)."""
    import torch

    torch.set_num_threads(1)
    folder = GOLDEN / machine_kind()
    folder.mkdir(exist_ok=True)
    for cases, load in ((VQGAN_CASES, load_vqgan_clip), (DIFFUSION_CASES, load_diffusion)):
        pipe = load()
        for name, case in cases.items():
            case(pipe).images[0].save(folder / f"{name}.png")
            print(f"recorded {folder / name}.png")


if __name__ == "__main__" and sys.argv[1:] == ["--record"]:
    record()
