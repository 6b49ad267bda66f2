"""The transformers backend: tiny random CLIPModel, ChineseCLIPModel, AltCLIPModel and SiglipModel folders,
checked against the models' own get_image_features / get_text_features, in losses, ensembles and a CLI."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import transformers_models as tiny_models  # tests/helpers
from guidance import (CLIPLoss, DirectionalCLIPLoss, InvalidInputError, MakeCutouts, ModelUnavailableError, load_clip,
                      save_clip, zero_shot_classify)
from guidance.backends.transformers import MODEL_CLASSES, TransformersCLIPEncoder
from guidance.clip_models import clip_source, parse_clip_spec


KINDS = list(tiny_models.BUILDERS)
TEXTS = ["a red circle", "the photo of a blue square", "一个红色的圆形"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """One saved tiny model folder per model class."""
    root = tmp_path_factory.mktemp("hf")
    return {kind: tiny_models.save_tiny_model(kind, root / kind) for kind in KINDS}


@pytest.fixture(scope="module")
def encoders(folders) -> dict[str, TransformersCLIPEncoder]:
    """Each folder loaded with load_clip. Shared: do not modify them."""
    return {kind: load_clip(str(folder)) for kind, folder in folders.items()}


def uint8_images(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, tiny_models.IMAGE_SIZE, tiny_models.IMAGE_SIZE, 3),
                                                dtype=np.uint8)


def unit(features) -> torch.Tensor:
    features = features if isinstance(features, torch.Tensor) else features.pooler_output
    return F.normalize(features.float(), dim=-1)


@pytest.mark.parametrize("kind", KINDS)
def test_embeddings_equal_the_models_own_features(encoders, kind):
    clip = encoders[kind]
    assert isinstance(clip, TransformersCLIPEncoder) and type(clip.model).__name__ == MODEL_CLASSES[kind]
    arrays = uint8_images(2, seed=5)
    with torch.no_grad():
        # the reference: the model's own processor on PIL images, the model's own tokenizer call
        pixels = clip.image_processor([Image.fromarray(a) for a in arrays], return_tensors="pt")["pixel_values"]
        expected_images = unit(clip.model.get_image_features(pixel_values=pixels))
        padding = "max_length" if kind == "siglip" else True
        tokens = clip.tokenizer(TEXTS, padding=padding, max_length=clip.context_length, truncation=True,
                                return_tensors="pt")
        if kind == "siglip":
            tokens = {"input_ids": tokens["input_ids"]}
        expected_texts = unit(clip.model.get_text_features(**tokens))
        images = torch.from_numpy(arrays).permute(0, 3, 1, 2).float() / 255
        torch.testing.assert_close(clip.encode_image(images), expected_images, rtol=0, atol=2e-5)
        torch.testing.assert_close(clip.encode_text(TEXTS), expected_texts, rtol=0, atol=2e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_images_of_any_size(encoders, kind):
    images = torch.rand(2, 3, 48, 40, generator=torch.Generator().manual_seed(1), requires_grad=True)
    encoders[kind].encode_image(images).sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0


def test_members_follow_config_and_processor(encoders):
    clip, siglip, chinese = encoders["clip"], encoders["siglip"], encoders["chinese_clip"]
    assert (clip.image_size, clip.embed_dim, clip.context_length) == (32, 16, 32)
    assert (siglip.embed_dim, siglip.context_length) == (32, 12)
    torch.testing.assert_close(clip.mean.flatten(), torch.tensor(clip.image_processor.image_mean))
    torch.testing.assert_close(siglip.std.flatten(), torch.tensor([0.5, 0.5, 0.5]))
    assert clip.logit_bias is None and chinese.logit_bias is None and siglip.logit_bias is not None
    assert float(clip.logit_scale) == pytest.approx(math.exp(float(clip.model.logit_scale)))


def test_ensemble_of_open_clip_and_transformers_models_in_clip_loss(tiny_clip, encoders):
    members = [(tiny_clip, 1.0), (encoders["chinese_clip"], 0.5)]
    loss_fn = CLIPLoss(members, "a red circle | 一个蓝色的正方形:-0.5", cutouts=MakeCutouts(32, cutn=4))
    images = torch.rand(1, 3, 40, 40, generator=torch.Generator().manual_seed(2), requires_grad=True)
    loss = loss_fn(images)
    loss.backward()
    assert torch.isfinite(loss) and images.grad.abs().sum() > 0
    assert any(key.startswith("tiny: ") for key in loss_fn.last_losses)
    assert any(str(encoders["chinese_clip"].name) in key for key in loss_fn.last_losses)


def test_directional_loss_with_a_transformers_model(encoders):
    source = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    loss_fn = DirectionalCLIPLoss(encoders["altclip"], source, "a red circle", "a blue circle")
    edited = source.clone().requires_grad_(True)
    loss_fn(edited).backward()
    assert edited.grad.abs().sum() > 0


def test_siglip_zero_shot_is_the_sigmoid_of_scaled_cosine_plus_bias(folders):
    siglip = load_clip(str(folders["siglip"]))
    siglip.model.logit_scale.data.fill_(math.log(10.0))
    siglip.model.logit_bias.data.fill_(-2.0)
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    labels = ["red circle", "blue square", "dog"]
    with torch.no_grad():
        cosine = siglip.encode_image(images) @ siglip.encode_text(labels).T
    probabilities = zero_shot_classify(siglip, images, labels, templates=("{}",))
    torch.testing.assert_close(probabilities, torch.sigmoid(10.0 * cosine - 2.0), rtol=1e-5, atol=1e-6)


def test_save_then_load_gives_the_same_embeddings(encoders, tmp_path):
    clip = encoders["chinese_clip"]
    folder = save_clip(clip, tmp_path / "saved")
    loaded = load_clip(folder)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image(images), clip.encode_image(images), rtol=0, atol=1e-6)
        torch.testing.assert_close(loaded.encode_text(TEXTS), clip.encode_text(TEXTS), rtol=0, atol=1e-6)


@pytest.mark.parametrize("spec, expected", [
    ("hf:OFA-Sys/chinese-clip-vit-base-patch16", ("hf:OFA-Sys/chinese-clip-vit-base-patch16", None, 1.0)),
    ("hf:BAAI/AltCLIP:0.5", ("hf:BAAI/AltCLIP", None, 0.5)),
    ("hf:google/siglip-base-patch16-224 :0.5", ("hf:google/siglip-base-patch16-224", None, 0.5)),
    ("models/my-clip:2", ("models/my-clip", None, 2.0)),
])
def test_clip_specs_with_hub_ids_and_folders(spec, expected):
    assert parse_clip_spec(spec) == expected


def test_hub_ids_and_folders_pick_the_transformers_rows(folders):
    assert clip_source("hf:OFA-Sys/chinese-clip-vit-base-patch16").kind == "transformers hub id"
    assert clip_source(str(folders["clip"])).kind == "transformers folder"
    assert clip_source("ViT-B-32").kind == "open_clip"


def test_offline_hub_id_fails_fast_in_one_line(empty_cache, monkeypatch):
    monkeypatch.setenv("CLIP_GUIDANCE_OFFLINE", "1")
    with pytest.raises(ModelUnavailableError) as caught:
        load_clip("hf:OFA-Sys/chinese-clip-vit-base-patch16")
    message = str(caught.value)
    assert "\n" not in message and "offline and not in the cache" in message and "save_pretrained" in message


def test_bad_hub_id_is_refused_in_one_line():
    with pytest.raises(InvalidInputError, match="hf:OWNER/NAME"):
        load_clip("hf:just-a-name")


def test_folder_without_config_is_refused_in_one_line(tmp_path):
    (tmp_path / "weights").mkdir()
    with pytest.raises(InvalidInputError, match="has no config.json") as caught:
        load_clip(str(tmp_path / "weights"))
    assert "\n" not in str(caught.value) and "save_pretrained" in str(caught.value)
    (tmp_path / "weights" / "model.safetensors").write_bytes(b"")
    with pytest.raises(InvalidInputError, match="give the file itself, e.g. .*model.safetensors"):
        load_clip(str(tmp_path / "weights"))


def test_unknown_model_class_in_a_folder_is_refused_in_one_line(folders, tmp_path):
    folder = tmp_path / "bert"
    shutil.copytree(folders["chinese_clip"], folder)
    config = json.loads((folder / "config.json").read_text())["text_config"]
    config["model_type"] = "bert"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidInputError, match="'bert' model, not a CLIP") as caught:
        load_clip(str(folder))
    assert "\n" not in str(caught.value) and "SiglipModel" in str(caught.value)


def test_mismatched_image_processor_is_refused_in_one_line(folders, tmp_path):
    folder = tmp_path / "mismatch"
    shutil.copytree(folders["siglip"], folder)
    settings = json.loads((folder / "preprocessor_config.json").read_text())
    settings["size"] = {"height": 48, "width": 48}
    (folder / "preprocessor_config.json").write_text(json.dumps(settings))
    with pytest.raises(InvalidInputError, match="resizes to 48 px but the model takes 32 px") as caught:
        load_clip(str(folder))
    assert "\n" not in str(caught.value)


def test_mismatched_tokenizer_is_refused_in_one_line(folders, tmp_path):
    folder = tmp_path / "mismatch"
    shutil.copytree(folders["chinese_clip"], folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)
    for path in folders["clip"].iterdir():  # CLIP's byte-level BPE has more tokens than this text tower
        if "token" in path.name or path.name in ("vocab.json", "merges.txt"):
            shutil.copy(path, folder / path.name)
    with pytest.raises(InvalidInputError, match="tokenizer has .* tokens but the text model only") as caught:
        load_clip(str(folder))
    assert "\n" not in str(caught.value)


@pytest.mark.slow
def test_vqgan_clip_cli_takes_a_transformers_folder(folders, tmp_path):
    from guidance import read_recipe
    from pipelines.vqgan_clip import main

    output = tmp_path / "red.png"
    args = ["a red circle", "--clip-model", str(folders["clip"]), "--vqgan", "shapes-tiny", "--size", "32",
            "--steps", "2", "--cutn", "2", "--seed", "1", "--device", "cpu", "-o", str(output)]
    assert main(args) == 0
    assert str(folders["clip"]) in json.dumps(read_recipe(output)["clip_models"])
