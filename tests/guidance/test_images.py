"""PNG files that carry their recipe, and readable errors for images that cannot be loaded."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from guidance import InvalidInputError, load_image, read_recipe, save_png, tensor_to_pil
from guidance.images import RECIPE_KEY

RECIPE = {
    "pipeline": "vqgan_clip",
    "prompt": "a clock at 10:30 :2|red:-1",
    "seed": 1234,
    "lr": 0.1,
    "size": [64, 48],
    "clip_models": ["ViT-B-32:openai:1"],
    "init_image": None,
    "options": {"cutn": 32, "augment": "default"},
}


@pytest.fixture
def quantised_image() -> torch.Tensor:
    """A (1, 3, 48, 64) image whose values are exact 8-bit levels, so a PNG round trip is lossless."""
    levels = torch.randint(0, 256, (1, 3, 48, 64), generator=torch.Generator().manual_seed(0))
    return levels.float() / 255


def test_save_png_then_read_recipe_round_trips_the_recipe(quantised_image, tmp_path):
    path = save_png(quantised_image, tmp_path / "out" / "image.png", RECIPE)
    assert path.is_file()
    assert read_recipe(path) == RECIPE


def test_every_recipe_key_is_its_own_text_chunk(quantised_image, tmp_path):
    path = save_png(quantised_image, tmp_path / "image.png", RECIPE)
    with Image.open(path) as image:
        chunks = dict(image.text)
    assert json.loads(chunks[RECIPE_KEY]) == RECIPE
    for key, value in RECIPE.items():
        assert key in chunks, f"recipe key {key!r} has no text chunk"
        assert (chunks[key] if isinstance(value, str) else json.loads(chunks[key])) == value
    assert chunks["prompt"] == RECIPE["prompt"], "strings are stored as they are, not JSON-quoted"


def test_saved_pixels_load_back_unchanged(quantised_image, tmp_path):
    path = save_png(quantised_image, tmp_path / "image.png", {"seed": 1})
    loaded = load_image(path)
    assert loaded.shape == (1, 3, 48, 64) and loaded.dtype == torch.float32
    torch.testing.assert_close(loaded, quantised_image, rtol=0, atol=1e-6)


def test_save_png_accepts_a_pil_image(quantised_image, tmp_path):
    path = save_png(tensor_to_pil(quantised_image), tmp_path / "pil.png", {"seed": 2})
    assert read_recipe(path) == {"seed": 2}


def test_load_image_resizes_to_width_by_height(quantised_image, tmp_path):
    path = save_png(quantised_image, tmp_path / "image.png", {})
    assert load_image(path, size=(40, 30)).shape == (1, 3, 30, 40)
    assert load_image(path, mode="L").shape == (1, 1, 48, 64)


def test_save_png_requires_a_png_suffix(quantised_image, tmp_path):
    with pytest.raises(InvalidInputError, match=r"\.png"):
        save_png(quantised_image, tmp_path / "image.jpg", {})


def test_load_image_of_a_missing_file_is_invalid_input(tmp_path):
    with pytest.raises(InvalidInputError, match="not found"):
        load_image(tmp_path / "missing.png")


def test_load_image_of_a_non_image_file_is_invalid_input(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("not an image")
    with pytest.raises(InvalidInputError, match="cannot read image") as info:
        load_image(path)
    assert "\n" not in str(info.value)


def test_read_recipe_of_a_png_without_recipe_is_invalid_input(tmp_path):
    path = tmp_path / "plain.png"
    Image.new("RGB", (4, 4)).save(path)
    with pytest.raises(InvalidInputError, match="no recipe"):
        read_recipe(path)


@pytest.mark.parametrize("content", [None, b"not an image"], ids=["missing", "not-an-image"])
def test_read_recipe_of_an_unreadable_file_is_invalid_input(tmp_path, content):
    path = tmp_path / "broken.png"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InvalidInputError, match="cannot read a recipe"):
        read_recipe(path)
