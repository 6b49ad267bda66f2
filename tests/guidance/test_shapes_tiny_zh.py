"""The shipped bilingual shapes-tiny-zh CLIP: Chinese and English zero-shot on rendered shapes, Chinese prompts as targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from guidance import CLIPLoss, MakeCutouts, load_clip, zero_shot_classify
from training import shapes_world as world


@pytest.fixture(scope="module")
def clip():
    return load_clip("shapes-tiny-zh")


def rendered(captions: list[str]) -> torch.Tensor:
    return torch.from_numpy(np.stack([world.render_canonical(c) for c in captions])).permute(0, 3, 1, 2).float() / 255


def test_it_reads_chinese_of_48_tokens(clip):
    assert (clip.name, clip.context_length, clip.image_size) == ("shapes-tiny-zh", 48, 64)


@pytest.mark.parametrize("language", ["zh", "en"])
def test_zero_shot_names_every_colour_and_shape(clip, language):
    templates = world.PROMPT_TEMPLATES_ZH if language == "zh" else world.PROMPT_TEMPLATES
    circles = rendered([f"a {colour} circle" for colour in world.COLOURS])
    colours = zero_shot_classify(clip, circles, world.colour_labels(language), templates)
    assert colours.argmax(1).tolist() == list(range(len(world.COLOURS)))
    shapes = rendered([f"a red {shape}" for shape in world.SHAPES])
    assert zero_shot_classify(clip, shapes, world.shape_labels(language), templates).argmax(1).tolist() == [0, 1, 2, 3]


def test_a_chinese_prompt_pulls_towards_its_scene(clip):
    loss = CLIPLoss(clip, "一个红色的圆形", cutouts=MakeCutouts(64, cutn=4, augment="none"))
    images = rendered(["a red circle", "a blue square"])
    with torch.no_grad():
        red, blue = loss(images, reduction="none").tolist()
    assert red < blue


def test_images_and_english_embed_as_with_shapes_tiny(clip):
    """Trained with --lock-english: the image tower and every English text are shapes-tiny's, so English prompts
    guide exactly as they do with shapes-tiny, and Chinese ones follow the same image space."""
    english = load_clip("shapes-tiny")
    images = rendered(["a red circle", "a blue square on the left", "a yellow star"])
    texts = ["a red circle", "a photo of a blue square.", "a yellow star on the right"]
    with torch.no_grad():
        assert torch.equal(clip.encode_image(images), english.encode_image(images))
        assert torch.allclose(clip.encode_text(texts), english.encode_text(texts), atol=1e-5)
