"""PNG files that carry their recipe, and readable errors for images that cannot be loaded."""

from __future__ import annotations

import json
import os
import resource
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from guidance import InvalidInputError, load_image, read_recipe, save_png, tensor_to_pil
from guidance.images import RECIPE_KEY, attach_recipe, read_image

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


# The one image reader: every PIL mode read as the pixels it shows, and one line for anything unreadable.

def test_a_16_bit_png_reads_at_its_real_brightness(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 64).round().astype(np.uint16), (8, 1))
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)  # uint16: mode I;16
    loaded = load_image(path)
    assert loaded.shape == (1, 3, 8, 64)
    assert loaded.mean().item() == pytest.approx(ramp.mean() / 65535, abs=2e-3)  # 0.5, not nearly white
    assert loaded[0, :, 0, 0].tolist() == [0.0, 0.0, 0.0] and loaded[0, :, 0, -1].tolist() == [1.0, 1.0, 1.0]


def test_a_32_bit_integer_greyscale_image_is_read_as_16_bit_data(tmp_path):
    path = tmp_path / "deep.tif"
    Image.fromarray(np.full((4, 4), 32896, dtype=np.int32)).save(path)  # int32: mode I
    assert read_image(path, mode="L").getpixel((0, 0)) == 128


def test_a_cmyk_image_reads_as_its_rgb_colour(tmp_path):
    path = tmp_path / "print.tif"
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(path)  # no cyan, full magenta and yellow: red
    assert read_image(path).getpixel((2, 2)) == (255, 0, 0)


def test_a_palette_image_with_transparency_is_composited_on_white(tmp_path):
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 0, 255])
    image.putpixel((1, 0), 1)
    path = tmp_path / "palette.png"
    image.save(path, transparency=1)
    read = read_image(path)
    assert read.mode == "RGB" and read.getpixel((0, 0)) == (255, 0, 0) and read.getpixel((1, 0)) == (255, 255, 255)


@pytest.mark.parametrize("mode, colour, expected", [
    ("RGBA", (0, 0, 255, 128), (127, 127, 255)),
    ("LA", (0, 128), (127, 127, 127)),
    ("RGBA", (0, 0, 0, 0), (255, 255, 255)),
])
def test_transparent_images_are_composited_on_white(tmp_path, mode, colour, expected):
    path = tmp_path / "alpha.png"
    Image.new(mode, (3, 3), colour).save(path)
    assert read_image(path).getpixel((1, 1)) == expected


def test_rgba_is_kept_when_asked_for(tmp_path):
    path = tmp_path / "alpha.png"
    Image.new("RGBA", (3, 3), (10, 20, 30, 40)).save(path)
    assert read_image(path, mode="RGBA").getpixel((0, 0)) == (10, 20, 30, 40)


def test_a_multi_frame_gif_gives_its_first_frame_or_is_refused_where_one_frame_is_wanted(tmp_path):
    path = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (4, 4), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(path, save_all=True, append_images=frames[1:])
    assert read_image(path).getpixel((0, 0)) == (255, 0, 0)
    with pytest.raises(InvalidInputError, match="has 2 frames"):
        read_image(path, single_frame=True)


def _png(width: int, height: int, rows: bytes | None) -> bytes:
    """A greyscale PNG declaring width x height; `rows` is its raw image data (None: a truncated, empty IDAT)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows or b"") + chunk(b"IEND", b"")


def _zeros_png(side: int) -> bytes:
    """A real, valid side x side black PNG, compressed row by row (a few KB for 10000 x 10000)."""
    compressor = zlib.compressobj(9)
    row = bytes(side + 1)
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    return _png(side, side, data)


@pytest.mark.parametrize("side, make", [(10000, _zeros_png), (20000, lambda side: _png(side, side, None)),
                                        (60000, lambda side: _png(side, side, None))])
def test_decompression_bombs_are_refused_from_the_header_without_using_memory(tmp_path, side, make):
    path = tmp_path / "bomb.png"
    path.write_bytes(make(side))
    assert path.stat().st_size < 200_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's DecompressionBombWarning must not escape either
        with pytest.raises(InvalidInputError, match="Mpx") as info:
            load_image(path)
    assert "\n" not in str(info.value) and "downscale" in str(info.value)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB: under 100 MB more


def test_the_pixel_limit_is_settable(tmp_path):
    path = tmp_path / "small.png"
    Image.new("RGB", (20, 10)).save(path)
    with pytest.raises(InvalidInputError, match="20x10"):
        read_image(path, max_pixels=100)
    assert read_image(path, max_pixels=200).size == (20, 10)


def test_the_default_pixel_limit_comes_from_the_environment(tmp_path, monkeypatch):
    path = tmp_path / "small.png"
    Image.new("RGB", (20, 10)).save(path)
    monkeypatch.setenv("CLIP_GUIDANCE_MAX_PIXELS", "100")
    with pytest.raises(InvalidInputError, match="20x10 .* over the limit of 0.0001 Mpx; downscale it first "
                                                r"\(or raise the limit with CLIP_GUIDANCE_MAX_PIXELS\)$"):
        load_image(path)
    assert read_image(path, max_pixels=200).size == (20, 10)  # an explicit limit wins
    monkeypatch.setenv("CLIP_GUIDANCE_MAX_PIXELS", "200")
    assert load_image(path).shape == (1, 3, 10, 20)


@pytest.mark.parametrize("value", ["lots", "0", "-5", "1e9"])
def test_a_bad_pixel_limit_in_the_environment_is_refused_in_one_line(tmp_path, monkeypatch, value):
    path = tmp_path / "small.png"
    Image.new("RGB", (20, 10)).save(path)
    monkeypatch.setenv("CLIP_GUIDANCE_MAX_PIXELS", value)
    with pytest.raises(InvalidInputError, match=f"CLIP_GUIDANCE_MAX_PIXELS='{value}' is not a pixel count") as error:
        read_image(path)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("content, message", [
    (b"", "empty file"),
    (b"plain text, not an image\n", "not an image format"),
    (None, "is a directory"),
])
def test_unreadable_inputs_are_one_line(tmp_path, content, message):
    path = tmp_path / "input.png"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    with pytest.raises(InvalidInputError, match=message) as info:
        load_image(path)
    assert "\n" not in str(info.value)


def test_a_truncated_image_is_one_line(tmp_path):
    whole = tmp_path / "whole.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(whole)
    path = tmp_path / "cut.png"
    path.write_bytes(whole.read_bytes()[:400])
    with pytest.raises(InvalidInputError, match="truncated or damaged"):
        load_image(path)


def test_api_images_carry_their_recipe_through_a_plain_save(tmp_path):
    image = attach_recipe(Image.new("RGB", (4, 4)), {"seed": 3, "prompt": "a red circle"})
    image.save(tmp_path / "plain.png")
    assert read_recipe(tmp_path / "plain.png") == {"seed": 3, "prompt": "a red circle"}
    # save_png's own recipe wins over an attached one
    save_png(image, tmp_path / "cli.png", {"seed": 3, "command": "python -m x"})
    assert read_recipe(tmp_path / "cli.png") == {"seed": 3, "command": "python -m x"}


def test_save_png_is_atomic_and_leaves_no_temporary_files(quantised_image, tmp_path):
    (tmp_path / "out.png").write_bytes(b"previous")
    save_png(quantised_image, tmp_path / "out.png", {"seed": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]
    assert read_recipe(tmp_path / "out.png") == {"seed": 1}
    umask = os.umask(0o022)
    os.umask(umask)
    assert (tmp_path / "out.png").stat().st_mode & 0o777 == 0o666 & ~umask  # as a plain write, not 0600


def test_a_failed_save_keeps_the_previous_file(quantised_image, tmp_path, monkeypatch):
    save_png(quantised_image, tmp_path / "out.png", {"seed": 1})
    previous = (tmp_path / "out.png").read_bytes()

    def broken(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        save_png(quantised_image, tmp_path / "out.png", {"seed": 2})
    assert (tmp_path / "out.png").read_bytes() == previous
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]
