"""CLIPEncoder as the one interface of every backend: a second backend written here works in losses, ensembles and
scoring beside the tiny open_clip model, and load_clip picks the source-table row for each kind of name."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from guidance import (CLIPEncoder, CLIPLoss, DirectionalCLIPLoss, InvalidInputError, MakeCutouts,
                      ModelUnavailableError, OpenCLIPEncoder, clip_score, load_clip, save_clip, zero_shot_classify)
from guidance import clip_models
from guidance.clip_loss import as_ensemble
from guidance.clip_models import CLIP_SOURCES, ClipRequest, ClipSource, clip_source

TOY_SIZE, TOY_DIM, TOY_SCALE = 16, 24, 7.5
TEMPLATES = ("a photo of a {}.", "{}", "a drawing of the {}")


class ToyCLIP(CLIPEncoder):
    """A minimal second backend: a random linear image tower and a byte-level embedding-bag text tower."""

    def __init__(self, name: str = "toy", seed: int = 0):
        super().__init__(name, TOY_SIZE, TOY_DIM, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), context_length=24)
        self.image_tower = nn.Linear(3 * TOY_SIZE * TOY_SIZE, TOY_DIM)
        self.text_tower = nn.EmbeddingBag(256, TOY_DIM, mode="mean")
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for parameter in self.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
        self.requires_grad_(False)

    @property
    def logit_scale(self) -> float:
        """A fixed temperature other than the default 100."""
        return TOY_SCALE

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """The linear tower on the flattened pixels."""
        return self.image_tower(pixels.flatten(1))

    def text_features(self, texts: list[str]) -> torch.Tensor:
        """The mean embedding of each text's first `context_length` UTF-8 bytes."""
        ids = [torch.tensor(list(text.encode()[: self.context_length]) or [0]) for text in texts]
        offsets = torch.tensor([0] + [len(i) for i in ids[:-1]]).cumsum(0)
        return self.text_tower(torch.cat(ids).to(self.device), offsets.to(self.device))


@pytest.fixture(scope="module")
def toy() -> ToyCLIP:
    """The toy backend. Shared: do not modify it."""
    return ToyCLIP()


@pytest.fixture
def images() -> torch.Tensor:
    """Four random 16 px images: the toy's input size, so the references below need no resize."""
    return torch.rand(4, 3, TOY_SIZE, TOY_SIZE, generator=torch.Generator().manual_seed(8))


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


@torch.no_grad()
def toy_image_embedding_np(toy: ToyCLIP, images: torch.Tensor) -> np.ndarray:
    """Unit image embeddings of 16 px images, straight from the toy's tower."""
    pixels = (images - toy.mean) / toy.std
    return _unit(toy.image_tower(pixels.flatten(1)).double().numpy())


@torch.no_grad()
def toy_text_embedding_np(toy: ToyCLIP, texts: list[str]) -> np.ndarray:
    """Unit text embeddings, straight from the toy's tower, one text at a time."""
    rows = [toy.text_tower.weight[list(text.encode()[: toy.context_length])].mean(0) for text in texts]
    return _unit(torch.stack(rows).double().numpy())


def whole_image_cutouts(side: int = 32, cutn: int = 2) -> MakeCutouts:
    """Unaugmented cutouts that are the whole (square, `side` px) image."""
    return MakeCutouts(side, cutn=cutn, min_size=side, max_size=side, augment="none")


# --- the interface -------------------------------------------------------------------------------------


def test_the_interface_cannot_be_instantiated_without_both_towers():
    with pytest.raises(TypeError):
        CLIPEncoder("x", 16, 8, (0.5,) * 3, (0.5,) * 3)

    class ImageOnly(CLIPEncoder):
        def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
            return pixels.flatten(1)

    with pytest.raises(TypeError, match="text_features"):
        ImageOnly("x", 16, 8, (0.5,) * 3, (0.5,) * 3)


def test_a_second_backend_provides_every_member_of_the_interface(toy):
    assert isinstance(toy, CLIPEncoder) and not isinstance(toy, OpenCLIPEncoder)
    assert (toy.name, toy.image_size, toy.embed_dim, toy.context_length) == ("toy", TOY_SIZE, TOY_DIM, 24)
    assert toy.device == torch.device("cpu") and toy.logit_scale == TOY_SCALE and toy.logit_bias is None
    assert toy.mean.shape == toy.std.shape == (1, 3, 1, 1)


def test_the_open_clip_backend_reports_its_trained_temperature(tiny_clip):
    assert isinstance(tiny_clip, OpenCLIPEncoder) and tiny_clip.logit_bias is None
    torch.testing.assert_close(tiny_clip.logit_scale, tiny_clip.model.logit_scale.exp())


def test_the_shared_wrappers_resize_normalise_and_unit_norm_any_backend(toy, images):
    np.testing.assert_allclose(toy.encode_image(images).numpy(), toy_image_embedding_np(toy, images), rtol=1e-4, atol=1e-6)
    texts = ["a red circle", "a blue square"]
    np.testing.assert_allclose(toy.encode_text(texts).numpy(), toy_text_embedding_np(toy, texts), rtol=1e-4, atol=1e-6)
    larger = toy.encode_image(torch.rand(2, 3, 40, 24))
    assert larger.shape == (2, TOY_DIM)
    torch.testing.assert_close(larger.norm(dim=-1), torch.ones(2))


@pytest.mark.parametrize("call, hint", [
    (lambda clip: clip.encode_image(torch.rand(3, 16, 16)), "unsqueeze"),
    (lambda clip: clip.encode_image([[0.5]]), "torch.Tensor"),
    (lambda clip: clip.encode_image(torch.zeros(1, 3, 16, 16, dtype=torch.uint8)), "uint8"),
    (lambda clip: clip.encode_text("a bare string"), "non-empty list of strings"),
    (lambda clip: clip.encode_text([]), "non-empty list of strings"),
], ids=["chw", "list", "uint8", "str", "empty"])
def test_every_backend_gets_the_shared_one_line_input_checks(toy, call, hint):
    with pytest.raises(InvalidInputError, match=hint) as info:
        call(toy)
    assert "\n" not in str(info.value)


def test_save_clip_refuses_a_backend_that_cannot_be_saved_in_one_line(toy, tmp_path):
    with pytest.raises(InvalidInputError, match="cannot save CLIP model 'toy'") as info:
        save_clip(toy, tmp_path / "toy.safetensors")
    assert "\n" not in str(info.value) and not (tmp_path / "toy.safetensors").exists()
    with pytest.raises(InvalidInputError, match="load_clip"):
        save_clip(object(), tmp_path / "object.safetensors")


# --- losses and scoring through the interface ----------------------------------------------------------


def test_clip_loss_with_a_second_backend_sends_gradients_to_the_images(toy):
    images = torch.rand(2, 3, 40, 36, generator=torch.Generator().manual_seed(1), requires_grad=True)
    loss_fn = CLIPLoss(toy, "a red circle", cutouts=MakeCutouts(TOY_SIZE, cutn=4))
    loss = loss_fn(images)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert torch.isfinite(images.grad).all() and images.grad[0].abs().sum() > 0 and images.grad[1].abs().sum() > 0
    assert not any(p.requires_grad for p in toy.parameters()), "the backend stays frozen"


def test_a_mixed_ensemble_sums_each_backends_weighted_loss(toy, tiny_clip):
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2), requires_grad=True)
    ensemble = CLIPLoss([(toy, 0.5), (tiny_clip, 2.0)], "a red circle", cutouts=whole_image_cutouts())
    assert CLIPLoss([toy, tiny_clip], "a red circle").cutouts.cut_size == 32, "cutouts at the largest input side"
    loss = ensemble(images)
    loss.backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
    assert set(ensemble.last_losses) == {"toy: a red circle", "tiny: a red circle"}
    with torch.no_grad():
        alone = [CLIPLoss(model, "a red circle", cutouts=whole_image_cutouts())(images) for model in (toy, tiny_clip)]
    torch.testing.assert_close(loss.detach(), 0.5 * alone[0] + 2.0 * alone[1])


def test_directional_loss_with_a_mixed_ensemble_follows_each_backends_text_direction(toy, tiny_clip):
    source = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    edited = (source + 0.1 * torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))).clamp(0, 1)
    edited.requires_grad_()
    loss_fn = DirectionalCLIPLoss([toy, tiny_clip], source, "circle", "square", templates=TEMPLATES)
    loss = loss_fn(edited, reduction="none")
    loss.sum().backward()
    assert loss.shape == (2,) and torch.isfinite(edited.grad).all() and edited.grad.abs().sum() > 0
    with torch.no_grad():
        expected = 0.0
        for model in (toy, tiny_clip):
            direction = [F.normalize(model.encode_text([t.format(word) for t in TEMPLATES]).mean(0), dim=-1)
                         for word in ("circle", "square")]
            change = model.encode_image(edited) - model.encode_image(source)
            expected = expected + 1 - F.cosine_similarity(change, (direction[1] - direction[0]).expand_as(change), dim=-1)
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-4, atol=1e-5)


def test_clip_score_of_a_second_backend_is_its_clamped_scaled_cosine(toy, images):
    texts = ["a red circle", "a dog", "a photo of a house", "blue"]
    cosine = (toy_image_embedding_np(toy, images) * toy_text_embedding_np(toy, texts)).sum(-1)
    np.testing.assert_allclose(clip_score(toy, images, texts).numpy(), np.maximum(100 * cosine, 0), rtol=1e-4, atol=1e-3)


def test_zero_shot_uses_the_backends_own_logit_scale(toy, images):
    labels = ["cat", "dog", "red circle"]
    classes = np.stack([_unit(toy_text_embedding_np(toy, [t.format(label) for t in TEMPLATES]).mean(0))
                        for label in labels])
    cosine = toy_image_embedding_np(toy, images) @ classes.T

    def softmax(logits: np.ndarray) -> np.ndarray:
        exp = np.exp(logits - logits.max(-1, keepdims=True))
        return exp / exp.sum(-1, keepdims=True)

    probabilities = zero_shot_classify(toy, images, labels, templates=TEMPLATES).numpy()
    np.testing.assert_allclose(probabilities, softmax(TOY_SCALE * cosine), rtol=1e-4, atol=1e-5)
    assert not np.allclose(probabilities, softmax(100 * cosine), atol=1e-3), "the scale makes a difference here"


def test_as_ensemble_takes_any_backend_and_refuses_other_modules(toy, tiny_clip):
    assert as_ensemble([(toy, 0.5), tiny_clip]) == [(toy, 0.5), (tiny_clip, 1.0)]
    with pytest.raises(InvalidInputError, match="load_clip"):
        as_ensemble([toy, nn.Linear(2, 2)])


# --- the table of sources ------------------------------------------------------------------------------


def test_the_sources_are_tried_in_order():
    assert [source.kind for source in CLIP_SOURCES] == ["built-in", "checkpoint file", "open_clip config", "hf-hub",
                                                        "transformers hub id", "transformers folder",
                                                        "open_clip with a Hugging Face text tower", "open_clip"]


@pytest.mark.parametrize("name, pretrained, with_config, kind", [
    ("shapes-tiny", None, False, "built-in"),
    ("shapes-tiny", None, True, "built-in"),  # built-in names come first
    ("somewhere/model.safetensors", None, False, "checkpoint file"),  # by suffix, even before the file exists
    ("weights.pt", None, True, "checkpoint file"),  # a file with a config dict for its architecture
    ("my-model", None, True, "open_clip config"),
    ("hf-hub:owner/repo", None, False, "hf-hub"),
    ("hf:owner/repo", None, False, "transformers hub id"),
    ("path/to/folder/", None, False, "transformers folder"),
    ("ViT-B-32", None, False, "open_clip"),
    ("ViT-B-32", "openai", False, "open_clip"),
    ("ViT-B-32", "opneai", False, "open_clip"),  # the row checks the tag when it loads
    ("any-name", "weights.pt", False, "open_clip"),  # NAME:FILE
])
def test_each_kind_of_name_picks_its_row(tiny_clip_config, name, pretrained, with_config, kind):
    assert clip_source(name, pretrained, tiny_clip_config if with_config else None).kind == kind


def test_an_existing_file_without_a_weights_suffix_is_a_checkpoint(tiny_clip, tiny_clip_config, tmp_path):
    path = tmp_path / "tiny-weights"
    torch.save(tiny_clip.model.state_dict(), path)
    assert clip_source(str(path), architecture=tiny_clip_config).kind == "checkpoint file"
    clip = load_clip(path, architecture=tiny_clip_config)
    assert clip.name == str(path) and clip.config == tiny_clip_config


def test_the_built_in_row_loads_the_shipped_model():
    clip = load_clip("shapes-tiny")
    assert isinstance(clip, OpenCLIPEncoder) and (clip.name, clip.image_size, clip.embed_dim) == ("shapes-tiny", 64, 128)


def test_the_checkpoint_row_loads_a_saved_model(tiny_clip, tmp_path):
    path = save_clip(tiny_clip, tmp_path / "tiny.safetensors")
    clip = load_clip(str(path))
    assert clip.name == str(path) and clip.config == tiny_clip.config
    torch.testing.assert_close(clip.encode_text(["a red circle"]), tiny_clip.encode_text(["a red circle"]))


def test_the_config_row_builds_a_random_model_named_as_asked(tiny_clip_config):
    clip = load_clip("fresh", architecture=tiny_clip_config)
    assert isinstance(clip, OpenCLIPEncoder) and clip.name == "fresh" and clip.config == tiny_clip_config


def test_the_hf_hub_row_fails_offline_fast_in_one_line(empty_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    with pytest.raises(ModelUnavailableError, match="offline") as info:
        load_clip("hf-hub:owner/some-clip", cache_dir=str(empty_cache))
    assert time.monotonic() - started < 10
    assert "hf-hub:owner/some-clip" in str(info.value) and "\n" not in str(info.value)


def test_the_open_clip_row_loads_a_name_with_or_without_a_weights_file(tiny_clip, tiny_clip_config, tmp_path):
    (tmp_path / "tiny-backends-registered.json").write_text(json.dumps(tiny_clip_config))
    open_clip.add_model_config(tmp_path)
    weights = tmp_path / "weights.pt"
    torch.save(tiny_clip.model.state_dict(), weights)
    clip = load_clip("tiny-backends-registered", pretrained=weights)
    assert clip.name == f"tiny-backends-registered:{weights}"
    torch.testing.assert_close(clip.encode_text(["a red circle"]), tiny_clip.encode_text(["a red circle"]))
    random = load_clip("tiny-backends-registered")
    assert random.name == "tiny-backends-registered" and random.config == tiny_clip_config


@pytest.mark.parametrize("name, suggestion", [("shapes-tny", "shapes-tiny"), ("ViT-B-33", "ViT-B-32")])
def test_an_unknown_name_gets_one_line_with_suggestions_from_every_row(name, suggestion):
    with pytest.raises(InvalidInputError, match=f"unknown CLIP architecture '{name}'; did you mean") as info:
        load_clip(name)
    assert suggestion in str(info.value) and "\n" not in str(info.value)


def test_a_new_source_is_one_row(toy, monkeypatch):
    row = ClipSource("toy", lambda name, pretrained, architecture: name.startswith("toy:"),
                     lambda request: ToyCLIP(request.name), names=lambda: ["toy:small"])
    monkeypatch.setattr(clip_models, "CLIP_SOURCES", [row, *CLIP_SOURCES])
    clip = load_clip(" toy:small ", device="cpu")
    assert isinstance(clip, ToyCLIP) and clip.name == "toy:small"
    torch.testing.assert_close(clip.encode_text(["a"]), toy.encode_text(["a"]))
    assert clip_source("shapes-tiny").kind == "built-in", "the other rows still match"
    with pytest.raises(InvalidInputError, match="did you mean toy:small"):
        load_clip("toy-smal")


def test_loaders_receive_the_whole_request(monkeypatch, tmp_path):
    seen: list[ClipRequest] = []
    row = ClipSource("spy", lambda *_: True, lambda request: seen.append(request) or ToyCLIP())
    monkeypatch.setattr(clip_models, "CLIP_SOURCES", [row])
    load_clip(Path("name"), Path("tag"), architecture="arch", cache_dir="cache", allow_pickle=True)
    assert seen == [ClipRequest("name", "tag", "arch", "cache", True)]


def test_importing_guidance_loads_no_app_generator_or_pipeline_code():
    code = ("import sys, guidance; print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'diffusers', 'gradio', 'generators', 'pipelines', 'training', 'apps'}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).parents[2])
    assert result.stdout.strip() == "[]"
