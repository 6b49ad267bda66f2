"""load_clip / save_clip round trips from local files, and the CLIPEncoder's inputs and outputs."""

from __future__ import annotations

import copy
import json
import warnings

import open_clip
import pytest
import torch

from guidance import CLIPEncoder, InvalidInputError, ModelUnavailableError, load_clip, save_clip

TEXTS = ["a red circle", "a blue square on a white background"]


@pytest.fixture(scope="module")
def probe_images() -> torch.Tensor:
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def state_dict_file(tiny_clip, tmp_path_factory):
    """A plain `torch.save(model.state_dict())` file of the tiny model: weights only, no config."""
    path = tmp_path_factory.mktemp("plain") / "tiny_state_dict.pt"
    torch.save(tiny_clip.model.state_dict(), path)
    return path


def assert_same_embeddings(loaded: CLIPEncoder, reference: CLIPEncoder, images: torch.Tensor) -> None:
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image(images), reference.encode_image(images), rtol=0, atol=1e-6)
        torch.testing.assert_close(loaded.encode_text(TEXTS), reference.encode_text(TEXTS), rtol=0, atol=1e-6)


def test_config_dict_builds_a_tiny_random_model(tiny_clip, tiny_clip_config):
    assert isinstance(tiny_clip, CLIPEncoder)
    assert (tiny_clip.name, tiny_clip.image_size, tiny_clip.context_length, tiny_clip.embed_dim) == ("tiny", 32, 16, 32)
    assert tiny_clip.config == tiny_clip_config
    assert tiny_clip.device == torch.device("cpu")


def test_save_clip_then_load_clip_gives_identical_embeddings(tiny_clip, probe_images, tmp_path):
    path = save_clip(tiny_clip, tmp_path / "tiny.safetensors")
    assert path.is_file()
    for name in (str(path), path):  # a str or a Path
        loaded = load_clip(name)
        assert loaded.config == tiny_clip.config
        torch.testing.assert_close(loaded.mean, tiny_clip.mean)
        torch.testing.assert_close(loaded.std, tiny_clip.std)
        assert_same_embeddings(loaded, tiny_clip, probe_images)


def test_save_clip_stores_config_and_normalisation_as_metadata(tiny_clip, tmp_path):
    from safetensors import safe_open

    path = save_clip(tiny_clip, tmp_path / "tiny.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    assert json.loads(metadata["open_clip_config"]) == tiny_clip.config
    assert json.loads(metadata["image_mean"]) == pytest.approx(list(open_clip.OPENAI_DATASET_MEAN))


def test_state_dict_file_loads_with_an_architecture_dict(tiny_clip, tiny_clip_config, state_dict_file, probe_images):
    loaded = load_clip(str(state_dict_file), architecture=tiny_clip_config)
    assert_same_embeddings(loaded, tiny_clip, probe_images)


def test_state_dict_file_loads_as_pretrained_of_a_registered_architecture(tiny_clip, tiny_clip_config, state_dict_file,
                                                                          probe_images, tmp_path):
    (tmp_path / "tiny-test-registered.json").write_text(json.dumps(tiny_clip_config))
    open_clip.add_model_config(tmp_path)
    assert "tiny-test-registered" in open_clip.list_models()
    loaded = load_clip("tiny-test-registered", pretrained=str(state_dict_file))
    assert_same_embeddings(loaded, tiny_clip, probe_images)


def test_state_dict_file_without_any_config_asks_for_the_architecture(state_dict_file):
    with pytest.raises(InvalidInputError, match="no model config") as info:
        load_clip(str(state_dict_file))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("change", [
    {"vision_cfg": {"layers": 3}},  # missing keys
    {"vision_cfg": {"width": 128}},  # same keys, other shapes
    {"embed_dim": 16},  # other projection shapes
], ids=["deeper", "wider", "other-embed-dim"])
def test_mismatched_architecture_is_a_one_line_invalid_input_error(tiny_clip_config, state_dict_file, change):
    config = copy.deepcopy(tiny_clip_config)
    for key, value in change.items():
        if isinstance(value, dict):
            config[key].update(value)
        else:
            config[key] = value
    with pytest.raises(InvalidInputError, match="does not match") as info:
        load_clip(str(state_dict_file), architecture=config)
    message = str(info.value)
    assert str(state_dict_file) in message and "\n" not in message


def test_missing_checkpoint_file_is_model_unavailable(tmp_path):
    with pytest.raises(ModelUnavailableError, match="not found"):
        load_clip(str(tmp_path / "nowhere.safetensors"))


def test_corrupt_checkpoint_file_is_invalid_input(tmp_path, tiny_clip_config):
    path = tmp_path / "corrupt.pt"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(InvalidInputError):
        load_clip(str(path), architecture=tiny_clip_config)


@pytest.mark.parametrize("shape", [(1, 3, 32, 32), (2, 3, 20, 50), (1, 3, 64, 48), (3, 3, 7, 7)])
def test_encode_image_accepts_any_size_and_returns_unit_vectors(tiny_clip, shape):
    embeddings = tiny_clip.encode_image(torch.rand(shape))
    assert embeddings.shape == (shape[0], 32) and embeddings.dtype == torch.float32
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(shape[0]))


def test_encode_image_is_differentiable_with_respect_to_the_images(tiny_clip):
    images = torch.rand(2, 3, 48, 40, requires_grad=True)
    tiny_clip.encode_image(images)[:, 0].sum().backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0


def test_encode_text_returns_unit_vectors(tiny_clip):
    embeddings = tiny_clip.encode_text(TEXTS)
    assert embeddings.shape == (2, 32)
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(2))
    assert not torch.allclose(embeddings[0], embeddings[1])


def test_encode_text_warns_when_truncating(tiny_clip):
    with pytest.warns(UserWarning, match="truncated to 16 tokens") as record:
        tiny_clip.encode_text(["a very long description " * 5])
    assert record[0].filename == __file__, "the warning points at the caller of encode_text"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tiny_clip.encode_text(["a short text"])


@pytest.mark.parametrize("images, hint", [
    ((torch.rand(1, 3, 32, 32) * 255).to(torch.uint8), "uint8"),
    (torch.rand(1, 4, 32, 32), "3 channels"),
    (torch.rand(1, 1, 32, 32), "3 channels"),
    (torch.rand(3, 32, 32), "unsqueeze"),
    ([[0.5]], "torch.Tensor"),
], ids=["uint8", "rgba", "gray", "chw", "list"])
def test_bad_images_raise_invalid_input(tiny_clip, images, hint):
    with pytest.raises(InvalidInputError, match=hint):
        tiny_clip.encode_image(images)


@pytest.mark.parametrize("texts", [[], "a bare string", ["ok", 3]], ids=["empty", "str", "non-str"])
def test_bad_texts_raise_invalid_input(tiny_clip, texts):
    with pytest.raises(InvalidInputError, match="non-empty list of strings"):
        tiny_clip.encode_text(texts)


@pytest.mark.parametrize("name", ["", "   "])
def test_empty_model_name_is_invalid_input(name):
    with pytest.raises(InvalidInputError, match="empty"):
        load_clip(name)
