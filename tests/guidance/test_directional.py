"""DirectionalCLIPLoss against an independent computation, its L1 term, ensembles and input errors."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch

from guidance import CHINESE_TEMPLATES, DirectionalCLIPLoss, IMAGENET_TEMPLATES, InvalidInputError, MakeCutouts

TEMPLATES = ("a photo of a {}.", "a drawing of a {}.", "{}")


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


@torch.no_grad()
def text_direction_np(clip, source: str, target: str, templates=TEMPLATES) -> np.ndarray:
    """normalize(mean_t unit(E(t(target))) renormalised - same for source), straight from the open_clip model."""
    def embed(text: str) -> np.ndarray:
        tokens = clip.tokenizer([template.format(text) for template in templates])
        return _unit(_unit(clip.model.encode_text(tokens).double().numpy()).mean(0))
    return _unit(embed(target) - embed(source))


@torch.no_grad()
def image_embedding_np(clip, images: torch.Tensor) -> np.ndarray:
    """Unit embeddings of 32 px images with OpenAI mean/std, straight from the open_clip model."""
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    return _unit(clip.model.encode_image((images - mean) / std).double().numpy())


def directional_np(edited_emb: np.ndarray, source_emb: np.ndarray, direction: np.ndarray) -> np.ndarray:
    change = edited_emb - source_emb
    return 1 - change @ direction / np.linalg.norm(change, axis=-1)


@pytest.fixture
def source() -> torch.Tensor:
    return torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(11))


@pytest.fixture
def edited(source) -> torch.Tensor:
    noise = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(12))
    return (source + 0.2 * noise).clamp(0, 1)


def test_whole_image_loss_equals_independent_computation(tiny_clip, source, edited):
    loss_fn = DirectionalCLIPLoss(tiny_clip, source, "a cat", "a dog", templates=TEMPLATES)
    expected = directional_np(image_embedding_np(tiny_clip, edited), image_embedding_np(tiny_clip, source),
                              text_direction_np(tiny_clip, "a cat", "a dog"))
    per_image = loss_fn(edited, reduction="none")
    assert per_image.shape == (2,)
    np.testing.assert_allclose(per_image.detach().numpy(), expected, rtol=1e-4, atol=1e-5)
    assert loss_fn(edited).item() == pytest.approx(expected.mean(), rel=1e-4, abs=1e-5)
    assert loss_fn.last_losses["directional"].item() == pytest.approx(expected.mean(), rel=1e-4, abs=1e-5)


def test_default_templates_are_the_80_imagenet_templates(tiny_clip, source, edited):
    assert len(IMAGENET_TEMPLATES) == 80
    loss_fn = DirectionalCLIPLoss(tiny_clip, source, "cat", "dog")
    direction = text_direction_np(tiny_clip, "cat", "dog", [t("{}") for t in IMAGENET_TEMPLATES])
    np.testing.assert_allclose(loss_fn.text_direction_0.double().numpy(), direction, rtol=1e-4, atol=1e-5)


@pytest.mark.filterwarnings("ignore:text truncated")  # the tiny CLIP's 16-token context
def test_chinese_texts_average_the_direction_over_the_chinese_templates(tiny_clip, source):
    loss_fn = DirectionalCLIPLoss(tiny_clip, source, "红色的圆形", "蓝色的圆形")
    direction = text_direction_np(tiny_clip, "红色的圆形", "蓝色的圆形", CHINESE_TEMPLATES)
    np.testing.assert_allclose(loss_fn.text_direction_0.double().numpy(), direction, rtol=1e-4, atol=1e-5)
    named = DirectionalCLIPLoss(tiny_clip, source, "红色的圆形", "蓝色的圆形", templates="imagenet")
    imagenet = text_direction_np(tiny_clip, "红色的圆形", "蓝色的圆形", [t("{}") for t in IMAGENET_TEMPLATES])
    np.testing.assert_allclose(named.text_direction_0.double().numpy(), imagenet, rtol=1e-4, atol=1e-5)


def test_loss_with_cutouts_crops_edited_and_source_with_the_same_boxes(tiny_clip, source, edited):
    cutouts = MakeCutouts(32, cutn=3, min_size=16, augment="none")
    loss_fn = DirectionalCLIPLoss(tiny_clip, source, "a cat", "a dog", cutouts=cutouts, templates=TEMPLATES)
    torch.manual_seed(4)
    boxes = cutouts.sample_boxes(32, 32, 3, edited.device)
    edited_views = cutouts.crop(edited, boxes)  # (3 * 2, ...), cutout-major
    source_views = cutouts.crop(source.expand(2, -1, -1, -1), boxes)
    per_view = directional_np(image_embedding_np(tiny_clip, edited_views), image_embedding_np(tiny_clip, source_views),
                              text_direction_np(tiny_clip, "a cat", "a dog"))
    torch.manual_seed(4)
    per_image = loss_fn(edited, reduction="none")
    np.testing.assert_allclose(per_image.detach().numpy(), per_view.reshape(3, 2).mean(0), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("use_cutouts", [False, True])
def test_gradient_reaches_the_edited_image(tiny_clip, source, edited, use_cutouts):
    cutouts = MakeCutouts(32, cutn=3, augment="none") if use_cutouts else None
    loss_fn = DirectionalCLIPLoss(tiny_clip, source, "a cat", "a dog", cutouts=cutouts, templates=TEMPLATES)
    images = edited.clone().requires_grad_()
    loss_fn(images).backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0


def test_l1_term_adds_weighted_mean_absolute_difference(tiny_clip, source, edited):
    plain = DirectionalCLIPLoss(tiny_clip, source, "a cat", "a dog", templates=TEMPLATES)
    with_l1 = DirectionalCLIPLoss(tiny_clip, source, "a cat", "a dog", templates=TEMPLATES, l1_weight=0.5)
    l1 = (edited - source).abs().double().numpy().mean(axis=(1, 2, 3))
    difference = (with_l1(edited, reduction="none") - plain(edited, reduction="none")).detach().numpy()
    np.testing.assert_allclose(difference, 0.5 * l1, rtol=1e-4, atol=1e-6)
    assert with_l1.last_losses["l1"].item() == pytest.approx(l1.mean(), rel=1e-5)
    assert "l1" not in plain.last_losses


def spherical_np(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """2 * arcsin(|a - b| / 2) ** 2 of unit vectors, row-wise."""
    return 2 * np.arcsin(np.linalg.norm(a - b, axis=-1) / 2) ** 2


def test_target_term_adds_the_weighted_spherical_distance_to_the_target_text(tiny_clip, source, edited):
    plain = DirectionalCLIPLoss(tiny_clip, source, "a cat", "a dog", templates=TEMPLATES)
    with_target = DirectionalCLIPLoss(tiny_clip, source, "a cat", "a dog", templates=TEMPLATES, target_weight=0.7)
    with torch.no_grad():
        target = _unit(tiny_clip.model.encode_text(tiny_clip.tokenizer(["a dog"])).double().numpy())
    distance = spherical_np(image_embedding_np(tiny_clip, edited), target)
    difference = (with_target(edited, reduction="none") - plain(edited, reduction="none")).detach().numpy()
    np.testing.assert_allclose(difference, 0.7 * distance, rtol=1e-4, atol=1e-5)
    assert with_target.last_losses["target"].item() == pytest.approx(distance.mean(), rel=1e-4, abs=1e-5)
    assert "target" not in plain.last_losses
    with pytest.raises(InvalidInputError, match="target_weight"):
        DirectionalCLIPLoss(tiny_clip, source, "a cat", "a dog", target_weight=-1.0)


def test_ensemble_weights_directional_losses(tiny_clip, tiny_clip_b, source, edited):
    def loss(models) -> torch.Tensor:
        return DirectionalCLIPLoss(models, source, "a cat", "a dog", templates=TEMPLATES)(edited)

    torch.testing.assert_close(loss([(tiny_clip, 2.0), (tiny_clip_b, 1.0)]), 2 * loss(tiny_clip) + loss(tiny_clip_b),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("source_text, target_text", [("a cat", "a cat"), ("a cat", "A  Cat")])
def test_texts_with_the_same_embedding_raise_a_clear_error(tiny_clip, source, source_text, target_text):
    with pytest.raises(InvalidInputError, match="no edit direction") as info:
        DirectionalCLIPLoss(tiny_clip, source, source_text, target_text, templates=TEMPLATES)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("source_text, target_text", [("", "a dog"), ("a cat", "  ")])
def test_empty_texts_raise_invalid_input(tiny_clip, source, source_text, target_text):
    with pytest.raises(InvalidInputError, match="empty"):
        DirectionalCLIPLoss(tiny_clip, source, source_text, target_text, templates=TEMPLATES)


def test_edited_size_must_match_the_source(tiny_clip, source):
    loss_fn = DirectionalCLIPLoss(tiny_clip, source, "a cat", "a dog", templates=TEMPLATES)
    with pytest.raises(InvalidInputError, match="must match"):
        loss_fn(torch.rand(1, 3, 32, 48))


def test_chw_source_image_is_accepted(tiny_clip, source, edited):
    batched = DirectionalCLIPLoss(tiny_clip, source, "a cat", "a dog", templates=TEMPLATES)(edited)
    chw = DirectionalCLIPLoss(tiny_clip, source[0], "a cat", "a dog", templates=TEMPLATES)(edited)
    torch.testing.assert_close(chw, batched)
