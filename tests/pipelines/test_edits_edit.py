"""Edits change what they are asked to, judged by pixel statistics on the shipped shapes models."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pipelines.clip_guided_diffusion as clip_guided_diffusion
import pipelines.latent_optimization as latent_optimization
from pipelines.clip_guided_diffusion import CLIPGuidedDiffusionPipeline
from pipelines.vqgan_clip import VQGANCLIPPipeline
from training.shapes_world import render_shape_image

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


@pytest.mark.parametrize("seed", [0, 1])
def test_the_inversion_edit_turns_red_black_with_the_target_texts_own_loss(diffusion, monkeypatch, seed):
    # The directional loss alone leaves the circle dark green on both seeds (the text direction red -> black points
    # at green for this CLIP); descending the distance to "a black circle" too gets it there (pipelines.common)
    source = torch.from_numpy(render_shape_image("red", "circle", image_size=32)).permute(2, 0, 1).float() / 255
    kwargs = dict(steps=20, seed=seed, init_image=source[None], source_text="a red circle", **COMMON)
    edited = diffusion("a black circle", **kwargs)
    monkeypatch.setattr(clip_guided_diffusion, "TARGET_WEIGHT", 0.0)
    direction_alone = diffusion("a black circle", **kwargs)
    assert judge(direction_alone.images[0], "black", "circle").colour == "green"
    assert judge(edited.images[0], "black", "circle").colour_hit


def test_the_unmasked_vqgan_edit_turns_red_blue_with_the_target_texts_loss_and_a_looser_hold(monkeypatch):
    # The directional loss alone at an L1 weight of 1 (the previous default) leaves the circle yellow; descending
    # "a blue circle" at 0.3 and holding to the source at 0.3 turns it blue (latent_optimization.WHOLE_IMAGE_*)
    vqgan = VQGANCLIPPipeline.from_pretrained("shapes-tiny", ["shapes-tiny"], device="cpu")
    kwargs = dict(size=64, steps=8, seed=5, init_image=SOURCE, source_text="a red circle", **COMMON)
    edited = vqgan("a blue circle", **kwargs)
    monkeypatch.setattr(latent_optimization, "WHOLE_IMAGE_TARGET_WEIGHT", 0.0)
    held = vqgan("a blue circle", init_weight=1.0, **kwargs)
    assert judge(held.images[0], "blue", "circle").colour == "yellow"
    assert judge(edited.images[0], "blue", "circle").colour_hit
    assert edited.recipe["init_weight"] == latent_optimization.WHOLE_IMAGE_FIDELITY
