"""Meaning, not just plumbing: VQGAN-CLIP with the shipped shapes-tiny models, judged by pixel statistics."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipelines.colour_stats import colour_shares, dominant_colour
from pipelines.shapes_world import render_canonical
from pipelines.vqgan_clip import VQGANCLIPPipeline

pytestmark = pytest.mark.slow

SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def pipe() -> VQGANCLIPPipeline:
    """The pipeline on the packaged shapes models (no download)."""
    return VQGANCLIPPipeline.from_pretrained("shapes-tiny", ["shapes-tiny"], device="cpu")


def generate(pipe: VQGANCLIPPipeline, prompt: str, seed: int) -> Image.Image:
    """One 64x64 image from the prompt."""
    return pipe(prompt, size=64, steps=60, seed=seed, cutn=16, lr=0.1, progress=False, save_every=0).images[0]


@pytest.mark.parametrize("prompt, colour", [("a red circle", "red"), ("a blue square", "blue"),
                                            ("a green triangle", "green"), ("a yellow star", "yellow")])
def test_generated_colour_matches_the_prompt_for_most_seeds(pipe, prompt, colour):
    found = [dominant_colour(generate(pipe, prompt, seed)) for seed in SEEDS]
    assert found.count(colour) >= 2, found


def test_negative_prompt_lowers_the_red_share(pipe):
    plain = np.mean([colour_shares(generate(pipe, "a red circle", seed))["red"] for seed in SEEDS])
    negative = np.mean([colour_shares(generate(pipe, "a red circle | red:-1", seed))["red"] for seed in SEEDS])
    assert negative < plain * 0.8, (plain, negative)


def test_directional_edit_turns_a_red_circle_blue_and_keeps_the_background(pipe, tmp_path):
    source_array = render_canonical("a red circle")
    Image.fromarray(source_array).save(tmp_path / "red.png")
    edited = pipe("a blue circle", size=64, steps=40, seed=0, cutn=16, init_image=tmp_path / "red.png",
                  source_text="a red circle", progress=False, save_every=0).images[0]
    before, after = colour_shares(source_array), colour_shares(edited)
    assert after["blue"] > before["blue"] + 0.03 and after["red"] < before["red"] * 0.5, (before, after)
    background = np.all(source_array == source_array[0, 0], axis=-1)
    change = np.abs(np.asarray(edited, dtype=float) - source_array.astype(float))[background].mean()
    assert change < 20, change
