"""Guided diffusion's edits change what they are asked to, judged by pixel statistics on the shipped shapes models."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.clip_guided_diffusion import CLIPGuidedDiffusionPipeline

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))  # the benchmark's judge imports by file name

from judge import judge  # noqa: E402

SOURCE = ROOT / "tests" / "data" / "golden" / "red-circle.png"
COMMON = {"progress": False, "save_every": 0, "cutn": 8}


@pytest.fixture(scope="module")
def diffusion() -> CLIPGuidedDiffusionPipeline:
    """Guided diffusion on the shipped shapes models."""
    return CLIPGuidedDiffusionPipeline.from_pretrained("shapes-tiny", ["shapes-tiny"], device="cpu")


def test_inversion_edit_turns_a_red_circle_blue_with_backward_guidance(diffusion):
    # 20 steps: at 10 the edit is at the mercy of float order (seed 8 gave blue on one machine, purple on another;
    # seeds 0, 1 and 8 at 20 steps all gave blue, on the AMD machine)
    # candidates=1: from the source alone, so that only guidance moves it (the default pool of recoloured starts
    # reaches blue without backward guidance too)
    kwargs = dict(steps=20, seed=8, init_image=SOURCE, source_text="a red circle", candidates=1, **COMMON)
    before = judge(Image.open(SOURCE), "blue", "circle")
    unguided_backward = diffusion("a blue circle", backward_steps=0, **kwargs)
    edited = diffusion("a blue circle", **kwargs)  # the edit's default: 5 backward-guidance steps per guided step
    assert before.colour == "red" and judge(unguided_backward.images[0], "blue", "circle").colour == "red"
    assert judge(edited.images[0], "blue", "circle").colour_hit
    assert edited.recipe["backward_steps"] == 5
    source, result = (np.asarray(image.convert("RGB").resize((32, 32))).astype(int)
                      for image in (Image.open(SOURCE), edited.images[0]))
    assert (result[..., 2] - source[..., 2]).mean() > 10  # bluer overall
