"""Uploads: decoded by content, the pixel count refused from the header, one still frame, one line each that
names the visitor's file and not the server's folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gradio.components.image_editor import EditorDataBlobs
from gradio.data_classes import FileData
from PIL import Image

from apps.uploads import editor_mask, editor_photo, read_upload, upload_editor, uploaded_mask
from guidance.errors import InvalidInputError


def layer_file(path: Path, size: tuple[int, int], box: tuple[int, int, int, int] | None) -> str:
    """A painted layer: transparent, with an opaque box."""
    layer = np.zeros((size[1], size[0], 4), dtype=np.uint8)
    if box:
        left, top, right, bottom = box
        layer[top:bottom, left:right] = (255, 48, 48, 200)
    Image.fromarray(layer, "RGBA").save(path)
    return str(path)


def one_line_error(function, *args) -> str:
    """The one-line refusal of a call."""
    with pytest.raises(InvalidInputError) as caught:
        function(*args)
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_a_decompression_bomb_is_refused_from_its_header(png_bomb):
    message = one_line_error(read_upload, png_bomb("bomb.png", 60_000), "RGB", 50_000_000)
    assert message.startswith("image 'bomb.png'") and "(3600 Mpx), over the limit of 50 Mpx" in message
    assert "/" not in message  # the visitor's file name, not where the server keeps it


@pytest.mark.parametrize("name, content, message", [
    ("notes.png", b"not an image at all", "cannot read image 'notes.png': not an image format PIL knows"),
    ("empty.png", b"", "image 'empty.png' is an empty file (0 bytes)"),
])
def test_a_non_image_is_refused_by_its_content_not_its_name(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    error = one_line_error(read_upload, tmp_path / name, "RGB", 10**6)
    assert error.startswith(message) and str(tmp_path) not in error


def test_a_truncated_image_is_refused_in_one_line(tmp_path):
    Image.new("RGB", (64, 64), (200, 10, 10)).save(tmp_path / "photo.jpg", quality=95)
    data = (tmp_path / "photo.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    assert "the file is truncated or damaged" in one_line_error(read_upload, tmp_path / "cut.jpg", "RGB", 10**6)


def test_an_animation_is_refused(tmp_path):
    frames = [Image.new("RGB", (8, 8), colour) for colour in ("red", "blue")]
    frames[0].save(tmp_path / "moving.gif", save_all=True, append_images=frames[1:])
    message = one_line_error(read_upload, tmp_path / "moving.gif", "RGB", 10**6)
    assert message.startswith("image 'moving.gif' has 2 frames, and this takes one still image")


def test_the_photo_is_flattened_on_white_and_refused_when_missing(tmp_path):
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    photo = editor_photo({"background": str(tmp_path / "clear.png"), "layers": []}, max_pixels=100)
    assert photo.mode == "RGB" and photo.getpixel((0, 0)) == (255, 255, 255)
    assert "upload a photo" in one_line_error(editor_photo, {"background": None, "layers": []}, 100)
    assert "upload a photo" in one_line_error(editor_photo, None, 100)


def test_the_mask_is_the_painted_area_of_the_layers_of_any_size(tmp_path):
    editor = {"background": None, "layers": [layer_file(tmp_path / "a.png", (48, 48), (8, 4, 24, 12)),
                                             layer_file(tmp_path / "b.png", (24, 24), (12, 12, 24, 24))]}
    painted = np.asarray(editor_mask(editor, (48, 48), 10**6)) > 0
    expected = np.zeros((48, 48), dtype=bool)
    expected[4:12, 8:24] = expected[24:, 24:] = True  # the second layer is at half the photo's scale
    assert np.array_equal(painted, expected)
    assert editor_mask({"layers": [layer_file(tmp_path / "c.png", (8, 8), None)]}, (8, 8), 10**6) is None
    assert editor_mask(None, (8, 8), 10**6) is None


def test_an_uploaded_mask_must_have_the_photos_size(tmp_path):
    Image.new("L", (8, 8), 255).save(tmp_path / "mask.png")
    assert np.asarray(uploaded_mask(tmp_path / "mask.png", (8, 8), 10**6)).min() == 255
    message = one_line_error(uploaded_mask, tmp_path / "mask.png", (16, 8), 10**6)
    assert message == ("the uploaded mask is 8x8 but the photo is 16x8; draw the mask on the same photo at the "
                       "same size")
    Image.new("L", (8, 8), 0).save(tmp_path / "black.png")
    assert "is all black, so nothing would change" in one_line_error(uploaded_mask, tmp_path / "black.png", (8, 8),
                                                                     10**6)


def test_the_editor_hands_over_files_undecoded(png_bomb):
    bomb = png_bomb("bomb.png", 60_000)
    editor = upload_editor(image_mode="RGBA")
    payload = editor.data_model(background=FileData(path=str(bomb)), layers=[], composite=None)
    assert editor.preprocess(payload) == {"background": str(bomb), "layers": [], "composite": None}
    editor.blob_storage["blob-1"] = EditorDataBlobs(background=bomb.read_bytes(), layers=[], composite=None)
    from_blob = editor.preprocess(editor.data_model(id="blob-1"))
    assert Path(from_blob["background"]).read_bytes() == bomb.read_bytes() and "blob-1" not in editor.blob_storage

