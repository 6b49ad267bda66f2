"""clip_score and zero_shot_classify against independent computations from the raw open_clip model."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch

from guidance import IMAGENET_TEMPLATES, InvalidInputError, clip_score, zero_shot_classify


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


@torch.no_grad()
def image_embedding_np(clip, images: torch.Tensor) -> np.ndarray:
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    return _unit(clip.model.encode_image((images - mean) / std).double().numpy())


@torch.no_grad()
def text_embedding_np(clip, texts: list[str]) -> np.ndarray:
    return _unit(clip.model.encode_text(clip.tokenizer(texts)).double().numpy())


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(21))


def test_clip_score_is_clamped_scaled_cosine_per_pair(tiny_clip, images):
    texts = ["a red circle", "a dog", "a photo of a house", "blue"]
    cosine = (image_embedding_np(tiny_clip, images) * text_embedding_np(tiny_clip, texts)).sum(-1)
    expected = np.maximum(100 * cosine, 0)
    got = clip_score(tiny_clip, images, texts)
    assert got.shape == (4,)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-3)


def test_clip_score_with_one_text_scores_every_image(tiny_clip, images):
    cosine = image_embedding_np(tiny_clip, images) @ text_embedding_np(tiny_clip, ["a red circle"])[0]
    np.testing.assert_allclose(clip_score(tiny_clip, images, "a red circle").numpy(), np.maximum(100 * cosine, 0),
                               rtol=1e-4, atol=1e-3)


def test_clip_score_clamps_negative_similarity_to_zero(tiny_clip, images, monkeypatch):
    image_embeddings = tiny_clip.encode_image(images)
    monkeypatch.setattr(tiny_clip, "encode_text", lambda texts: -image_embeddings)  # cos = -1 for every pair
    assert torch.count_nonzero(clip_score(tiny_clip, images, ["x"] * 4)) == 0
    monkeypatch.setattr(tiny_clip, "encode_text", lambda texts: image_embeddings)  # cos = 1
    torch.testing.assert_close(clip_score(tiny_clip, images, ["x"] * 4), torch.full((4,), 100.0))


def test_clip_score_rejects_mismatched_text_count(tiny_clip, images):
    with pytest.raises(InvalidInputError, match="4 images and 2 texts"):
        clip_score(tiny_clip, images, ["a", "b"])


@pytest.mark.parametrize("templates", [("a photo of a {}.", "{}", "a drawing of the {}"), IMAGENET_TEMPLATES],
                         ids=["format-strings", "imagenet-callables"])
def test_zero_shot_matches_template_averaged_class_embeddings_and_logit_scale(tiny_clip, images, templates):
    labels = ["cat", "dog", "red circle"]

    def class_embedding(label: str) -> np.ndarray:
        texts = [t(label) if callable(t) else t.format(label) for t in templates]
        return _unit(text_embedding_np(tiny_clip, texts).mean(0))

    classes = np.stack([class_embedding(label) for label in labels])
    scale = float(tiny_clip.model.logit_scale.exp())
    assert scale != pytest.approx(100.0), "a scale other than 100 shows that the model's own one is used"
    logits = scale * image_embedding_np(tiny_clip, images) @ classes.T
    expected = np.exp(logits - logits.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)

    probabilities = zero_shot_classify(tiny_clip, images, labels, templates=templates)
    assert probabilities.shape == (4, 3)
    torch.testing.assert_close(probabilities.sum(-1), torch.ones(4))
    np.testing.assert_allclose(probabilities.numpy(), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("labels, templates, hint", [
    (["cat"], ("{}",), "two labels"),
    ("cat", ("{}",), "two labels"),
    (["cat", "dog"], (), "template"),
])
def test_zero_shot_rejects_bad_labels_and_templates(tiny_clip, images, labels, templates, hint):
    with pytest.raises(InvalidInputError, match=hint):
        zero_shot_classify(tiny_clip, images, labels, templates=templates)
