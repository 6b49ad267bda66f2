"""The meaning benchmark's judge (bench/judge.py) knows the shapes world: it names the colour and shape of clean
renders, and measures an edit's change inside and outside its region."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from training.shapes_world import COLOURS, POSITIONS, SHAPES, render_shape_image, sample_background

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))  # the benchmark scripts import each other by file name

from judge import judge, region_change  # noqa: E402


def renders(image_size: int):
    """Large shapes of every colour and shape, jittered, at every position, on grey and on random muted
    backgrounds (what the benchmark's prompts ask for): ((colour, shape), image)."""
    for colour in COLOURS:
        for shape in SHAPES:
            for index, position in enumerate(POSITIONS):
                rng = np.random.default_rng([image_size, index])
                background = sample_background(rng, colour) if index % 2 else (128, 128, 128)
                yield (colour, shape), render_shape_image(colour, shape, position, "large", background, image_size, rng)


@pytest.mark.parametrize("image_size", [32, 64])
def test_judge_names_colour_and_shape_of_at_least_98_percent_of_clean_renders(image_size):
    verdicts = [(asked, judge(image, *asked)) for asked, image in renders(image_size)]
    assert len(verdicts) == 8 * 4 * 5
    colour = np.mean([v.colour_hit for _, v in verdicts])
    shape = np.mean([v.shape_hit for _, v in verdicts])
    misses = [(asked, v.colour, v.shape) for asked, v in verdicts if not (v.colour_hit and v.shape_hit)]
    assert colour >= 0.98 and shape >= 0.98, misses


@pytest.mark.parametrize("colour", list(COLOURS))
def test_judge_rejects_the_wrong_colour_and_shape(colour):
    image = render_shape_image(colour, "star", image_size=64)
    other = next(c for c in COLOURS if c != colour)
    assert not judge(image, other, "star").colour_hit
    assert not judge(image, colour, "circle").shape_hit
    assert judge(image, colour, "star").shape_hit


def test_judge_finds_no_shape_in_noise_or_a_plain_field():
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    red_field = np.broadcast_to(np.array(COLOURS["red"], dtype=np.uint8), (64, 64, 3))
    assert not judge(noise, "red", "circle").shape_hit
    verdict = judge(red_field, "red", "square")
    assert verdict.colour_hit and not verdict.shape_hit
    grey = np.full((64, 64, 3), 128, dtype=np.uint8)
    assert judge(grey, "white", "circle").colour == "none"


def test_white_and_black_backgrounds_are_not_shapes():
    black = render_shape_image("red", "circle", background=(5, 5, 5), image_size=64)
    verdict = judge(black, "red", "circle")
    assert verdict.colour == "red" and verdict.shape_hit


def test_region_change_measures_inside_and_outside():
    before = np.full((32, 32, 3), 100, dtype=np.uint8)
    after = before.copy()
    after[8:24, 8:24] = 200
    region = np.zeros((32, 32), dtype=bool)
    region[8:24, 8:24] = True
    inside, outside = region_change(before, after, region)
    assert math.isclose(inside, 100.0) and outside == 0.0
