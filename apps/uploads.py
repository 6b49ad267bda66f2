"""Uploads to the web app: photos, painted layers and masks, read by the toolkit's one image reader.

Files reach the handlers undecoded (`upload_editor`), so the pixel count is checked from the header before any
decoding, multi-frame files are refused, and every refusal is one line naming the visitor's file, not its
path on the server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from gradio import processing_utils
from gradio.data_classes import FileData
from PIL import Image

from guidance.errors import InvalidInputError
from guidance.images import read_image

EditorFiles = dict[str, Any]  # {'background': path | None, 'layers': [path, ...], 'composite': path | None}


def read_upload(path: str | Path, mode: str, max_pixels: int) -> Image.Image:
    """An uploaded image file as a PIL image in `mode`: one still image of at most `max_pixels` pixels."""
    try:
        return read_image(path, mode=mode, max_pixels=max_pixels, single_frame=True)
    except InvalidInputError as error:  # name the visitor's file, not where the server keeps it
        raise InvalidInputError(str(error).replace(str(path), repr(Path(path).name))) from None


def editor_photo(editor: EditorFiles | None, max_pixels: int) -> Image.Image:
    """The uploaded photo (the editor's background) as RGB, transparency on white; refused when missing or bad."""
    background = (editor or {}).get("background")
    if background is None:
        raise InvalidInputError("no image to edit; upload a photo into the image editor first")
    return read_upload(background, "RGB", max_pixels)


def editor_mask(editor: EditorFiles | None, size: tuple[int, int], max_pixels: int) -> Image.Image | None:
    """The region painted on the editor's layers as an 'L' mask of `size` (255 = change), None if unpainted."""
    layers = [layer for layer in (editor or {}).get("layers") or [] if layer is not None]
    painted = np.zeros(size[::-1], dtype=bool)
    for layer in layers:
        alpha = read_upload(layer, "RGBA", max_pixels).getchannel("A")
        if alpha.size != size:  # the canvas may hold the layer at another scale than the photo
            alpha = alpha.resize(size, Image.Resampling.NEAREST)
        painted |= np.asarray(alpha) > 0
    return Image.fromarray(painted.astype(np.uint8) * 255) if painted.any() else None


def uploaded_mask(path: str | Path, size: tuple[int, int], max_pixels: int) -> Image.Image:
    """An uploaded mask file (white = change) as an 'L' image; it must have the photo's size."""
    mask = read_upload(path, "L", max_pixels)
    if mask.size != tuple(size):
        raise InvalidInputError(f"the uploaded mask is {mask.width}x{mask.height} but the photo is "
                                f"{size[0]}x{size[1]}; draw the mask on the same photo at the same size")
    if mask.getextrema()[1] == 0:
        raise InvalidInputError("the uploaded mask is all black, so nothing would change; paint the region to edit "
                                "white")
    return mask


def upload_editor(**settings: Any) -> gr.ImageEditor:
    """Gradio's image editor, handing the handler the uploaded files undecoded (checked there, before decoding).

    Its `preprocess` is replaced on the instance rather than in a subclass: Gradio writes a `.pyi` copy of any
    module that subclasses a component."""
    editor = gr.ImageEditor(**settings)

    def path_of(file: FileData | bytes | None) -> str | None:
        """Where an uploaded file (or a blob the page's canvas sent) lies in Gradio's cache."""
        if file is None or isinstance(file, FileData):
            return file and file.path
        return processing_utils.save_bytes_to_cache(bytes(file), "image.png", editor.GRADIO_CACHE)

    def files_of(payload: Any) -> EditorFiles | None:
        """The editor's files as paths: background, painted layers and composite."""
        if payload is None:
            return None
        files = editor.blob_storage.pop(payload.id, None) if payload.id is not None else payload
        if files is None:
            return {"background": None, "layers": [], "composite": None}
        return {"background": path_of(files.background),
                "layers": [path for path in map(path_of, files.layers) if path is not None],
                "composite": path_of(files.composite)}

    editor.preprocess = files_of  # type: ignore[method-assign]
    return editor
