"""The relevance map and mask of a text edit (`--mask auto`): its form, its ensemble weighting, what the shipped
shapes CLIP finds on a rendered shape, and one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from guidance import InvalidInputError, load_clip
from guidance.relevance import relevance_map, relevance_mask
from training.shapes_world import render_shape_image


@pytest.fixture
def image() -> torch.Tensor:
    return torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def test_map_is_one_channel_in_unit_range_with_its_maximum_at_one(tiny_clip, image):
    found = relevance_map(tiny_clip, image, "a photo of a cat", "a photo of a dog")
    assert found.shape == (1, 1, 32, 32) and found.min() >= 0 and found.max().item() == pytest.approx(1.0)
    assert not image.requires_grad and image.grad is None  # the caller's image is left alone


def test_mask_is_binary_and_grows_by_the_asked_pixels(tiny_clip, image):
    tight = relevance_mask(tiny_clip, image, "a cat", "a dog")
    grown = relevance_mask(tiny_clip, image, "a cat", "a dog", grow=2)
    assert tight.shape == (1, 1, 32, 32) and set(tight.unique().tolist()) == {0.0, 1.0}
    assert grown.sum() > tight.sum() and bool((grown >= tight).all())


def test_large_images_are_refined_at_the_working_size_and_masked_at_their_own(tiny_clip):
    large = torch.rand(1, 3, 200, 150, generator=torch.Generator().manual_seed(5))
    mask = relevance_mask(tiny_clip, large, "a cat", "a dog")
    assert mask.shape == (1, 1, 200, 150) and 0 < mask.mean() < 1


def test_a_zero_weight_ensemble_member_adds_nothing(tiny_clip, tiny_clip_b, image):
    alone = relevance_map(tiny_clip, image, "a cat", "a dog")
    assert torch.allclose(relevance_map([(tiny_clip, 1.0), (tiny_clip_b, 0.0)], image, "a cat", "a dog"), alone)
    assert not torch.allclose(relevance_map([(tiny_clip, 1.0), (tiny_clip_b, 1.0)], image, "a cat", "a dog"), alone)


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("shape", ["circle", "square", "triangle", "star"])
def test_the_shapes_clip_finds_the_shape_it_is_asked_to_recolour(size, shape):
    # Measured, red -> blue: IoU with the shape 0.88-0.99 (the misses are antialiased edge pixels), and no
    # background pixel in the mask. The unrefined map, thresholded at its mean, overlaps the shape by 0.42-0.49.
    clip = load_clip("shapes-tiny")
    source = render_shape_image("red", shape, image_size=size)
    inside = ~np.all(source == source[0, 0], axis=-1)
    tensor = torch.from_numpy(source).permute(2, 0, 1).float().div(255).unsqueeze(0)
    mask = relevance_mask(clip, tensor, f"a red {shape}", f"a blue {shape}")[0, 0].numpy() > 0.5
    assert (mask & inside).sum() / (mask | inside).sum() >= 0.85
    assert (mask & ~inside).sum() <= 0.01 * (~inside).sum()


@pytest.mark.parametrize("texts, images, options, message", [
    (("a cat", "a cat"), 1, {}, "no edit region"),
    (("a cat", "a dog"), 2, {}, "one image"),
    (("a cat", "a dog"), 1, {"grow": -1}, "grow"),
])
def test_bad_input_raises_one_line(tiny_clip, texts, images, options, message):
    batch = torch.rand(images, 3, 32, 32)
    with pytest.raises(InvalidInputError, match=message) as error:
        relevance_mask(tiny_clip, batch, *texts, **options)
    assert "\n" not in str(error.value)
