"""Image files in and out: one reader for every image the toolkit takes, [0, 1] BCHW tensors, and PNGs that carry
the recipe that made them (written atomically)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import struct
import warnings
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np
import torch
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from .errors import InvalidInputError
from .outputs import atomic_path

RECIPE_KEY = "clip-guidance-recipe"
MAX_PIXELS = 50_000_000  # default limit of read_image: larger images are refused before they are decoded
MAX_PIXELS_VARIABLE = "CLIP_GUIDANCE_MAX_PIXELS"  # environment variable replacing MAX_PIXELS (a pixel count)
READ_MODES = ("RGB", "L", "RGBA")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
# What PIL may raise while opening or decoding a file that is not a readable image.
_DECODE_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, IndexError, struct.error,
                  Image.DecompressionBombError, MemoryError)


@contextlib.contextmanager
def _opened(path: Path) -> Iterator[Image.Image]:
    """The image file opened lazily (header only), PIL's own bomb warnings silenced: read_image checks the size."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as image:
            yield image


def default_max_pixels() -> int:
    """read_image's default pixel limit: $CLIP_GUIDANCE_MAX_PIXELS when set, else MAX_PIXELS."""
    text = os.environ.get(MAX_PIXELS_VARIABLE, "").strip()
    if not text:
        return MAX_PIXELS
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise InvalidInputError(f"{MAX_PIXELS_VARIABLE}={text!r} is not a pixel count; set it to a whole number "
                                f"such as {MAX_PIXELS * 2}, or unset it for the default {MAX_PIXELS}")
    return value


def read_image(path: str | Path, mode: str = "RGB", max_pixels: int | None | Literal["default"] = "default",
               single_frame: bool = False) -> Image.Image:
    """Read any image file as an 8-bit PIL image in `mode` ('RGB', 'L' or 'RGBA'), or raise a one-line error.

    The pixel count is checked from the header before decoding (`max_pixels`; None for no limit, 'default' for
    MAX_PIXELS or the environment variable CLIP_GUIDANCE_MAX_PIXELS when it is set). 16-bit images
    are scaled (not clipped) to 8 bits, palettes and CMYK converted, transparency composited on white (except
    for 'RGBA'). A multi-frame file (GIF, APNG, TIFF) gives its first frame, or is refused if `single_frame`.
    """
    if mode not in READ_MODES:
        raise InvalidInputError(f"unknown image mode {mode!r}; choose one of {', '.join(READ_MODES)}")
    hint = f" (or raise the limit with {MAX_PIXELS_VARIABLE})" if max_pixels == "default" else ""
    max_pixels = default_max_pixels() if max_pixels == "default" else max_pixels
    path = Path(path)
    if path.is_dir():
        raise InvalidInputError(f"{path} is a directory, not an image file; give the path of a PNG, JPEG or WebP file")
    if not path.is_file():
        raise InvalidInputError(f"image file not found: {path}")
    if path.stat().st_size == 0:
        raise InvalidInputError(f"image {path} is an empty file (0 bytes); give a PNG, JPEG or WebP file")
    try:
        with _opened(path) as image:
            _check_pixels(path, image.size, max_pixels, hint)
            frames = getattr(image, "n_frames", 1)
            if single_frame and frames > 1:
                raise InvalidInputError(f"image {path} has {frames} frames, and this takes one still image; "
                                        "save the frame you want as a PNG")
            image.seek(0)
            image.load()
            return convert_image(image, mode)
    except InvalidInputError:
        raise
    except Image.DecompressionBombError as error:  # over PIL's own hard limit, raised while reading the header
        declared = re.search(r"\((\d+) pixels\)", str(error))
        count = f" ({int(declared.group(1)) / 1e6:.0f} Mpx)" if declared else ""
        raise InvalidInputError(f"image {path} is too large{count}, over the limit of {_megapixels(max_pixels)}; "
                                f"downscale it first{hint}") from None
    except UnidentifiedImageError:
        raise InvalidInputError(f"cannot read image {path}: not an image format PIL knows; "
                                "use a PNG, JPEG or WebP file") from None
    except _DECODE_ERRORS as error:
        raise InvalidInputError(f"cannot read image {path}: the file is truncated or damaged "
                                f"({type(error).__name__}); save it again as a PNG, JPEG or WebP file") from None


def _check_pixels(path: Path, size: tuple[int, int], max_pixels: int | None, hint: str) -> None:
    """Refuse an image whose header declares more than `max_pixels` pixels (`hint` ends the message)."""
    width, height = size
    if width <= 0 or height <= 0:
        raise InvalidInputError(f"image {path} declares an impossible size {width}x{height}; save it again")
    if max_pixels is not None and width * height > max_pixels:
        raise InvalidInputError(f"image {path} is {width}x{height} ({width * height / 1e6:.0f} Mpx), over the limit of "
                                f"{_megapixels(max_pixels)}; downscale it first{hint}")


def _megapixels(count: int | None) -> str:
    """A pixel limit in words."""
    return "PIL's limit" if count is None else f"{count / 1e6:g} Mpx"


def convert_image(image: Image.Image, mode: str = "RGB") -> Image.Image:
    """Any PIL image (any mode) as an 8-bit image in `mode`; transparency is composited on white unless 'RGBA'."""
    if image.mode in _SIXTEEN_BIT or image.mode in ("I", "F"):
        image = _to_eight_bit(image)
    if image.mode == "CMYK" or image.mode == "YCbCr" or image.mode == "LAB" or image.mode == "HSV":
        image = image.convert("RGB")
    transparent = "A" in image.mode or "a" in image.mode or "transparency" in image.info
    if transparent:
        image = image.convert("RGBA")
        if mode != "RGBA":
            image = Image.alpha_composite(Image.new("RGBA", image.size, (255, 255, 255, 255)), image)
    try:
        return image if image.mode == mode else image.convert(mode)
    except ValueError:
        raise InvalidInputError(f"cannot convert an image in PIL mode {image.mode!r} to {mode}; "
                                "save it as an RGB PNG") from None


def _to_eight_bit(image: Image.Image) -> Image.Image:
    """A 16-bit ('I;16*'), 32-bit integer ('I') or float ('F') greyscale image as 8-bit 'L', scaled, not clipped.

    'I' holds 16-bit PNG and TIFF data, so it is scaled by 1/257 (65535 -> 255); 'F' is taken as [0, 1].
    """
    array = np.asarray(image, dtype=np.float64)
    scale = 255.0 if image.mode == "F" else 1 / 257
    return Image.fromarray(np.clip(np.round(array * scale), 0, 255).astype(np.uint8))


def load_image(path: str | Path, size: tuple[int, int] | None = None, mode: str = "RGB",
               max_pixels: int | None | Literal["default"] = "default") -> torch.Tensor:
    """Read an image file (read_image) as a (1, C, H, W) float tensor in [0, 1], optionally resized to (width, height)."""
    image = read_image(path, mode, max_pixels)
    if size is not None and image.size != tuple(size):
        image = image.resize(tuple(size), Image.Resampling.LANCZOS)
    return pil_to_tensor(image)


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """A PIL image as a (1, C, H, W) float tensor in [0, 1]."""
    array = np.asarray(image, dtype=np.float32) / 255.0
    array = array[..., None] if array.ndim == 2 else array
    return torch.from_numpy(array.copy()).permute(2, 0, 1).unsqueeze(0)


def tensor_to_pil(image: torch.Tensor) -> Image.Image:
    """The first image of a [0, 1] (B)CHW tensor as an 8-bit PIL image."""
    image = image[0] if image.ndim == 4 else image
    array = (image.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def png_output_path(path: str | Path) -> Path:
    """The path as a Path, or a one-line error if it cannot carry a recipe (not a .png)."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise InvalidInputError(f"output {path} must end in .png so it can carry its recipe")
    return path


def recipe_chunks(recipe: dict[str, Any]) -> PngImagePlugin.PngInfo:
    """PNG text chunks holding the recipe (JSON) and each parameter as its own chunk."""
    info = PngImagePlugin.PngInfo()
    info.add_itxt(RECIPE_KEY, json.dumps(recipe, default=str, sort_keys=True))
    for key, value in recipe.items():
        info.add_itxt(str(key), value if isinstance(value, str) else json.dumps(value, default=str))
    return info


def attach_recipe(image: Image.Image, recipe: dict[str, Any]) -> Image.Image:
    """Make the image carry its recipe: `image.save("x.png")` then writes it (PIL's per-image `encoderinfo`, read
    by `save` since Pillow 11.1), and `image.info[RECIPE_KEY]` holds it as JSON. Returns the same image."""
    image.encoderinfo = {**getattr(image, "encoderinfo", {}), "pnginfo": recipe_chunks(recipe)}
    image.info[RECIPE_KEY] = json.dumps(recipe, default=str, sort_keys=True)
    return image


def save_png(image: Image.Image | torch.Tensor, path: str | Path, recipe: dict[str, Any]) -> Path:
    """Save a PNG whose text chunks hold the recipe (JSON) and each parameter as its own chunk, atomically
    (a temporary file in the same folder, then a rename: a crash never leaves a broken file)."""
    image = tensor_to_pil(image) if isinstance(image, torch.Tensor) else image
    path = png_output_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = image.copy() if hasattr(image, "encoderinfo") else image  # an attached recipe would win over this one
    with atomic_path(path) as temporary:
        image.save(temporary, format="PNG", pnginfo=recipe_chunks(recipe))
    return path


def read_recipe(path: str | Path) -> dict[str, Any]:
    """The recipe stored in a PNG by save_png."""
    try:
        with _opened(Path(path)) as image:
            text = image.text.get(RECIPE_KEY) if hasattr(image, "text") else None
    except _DECODE_ERRORS as error:
        raise InvalidInputError(f"cannot read a recipe from {path} ({type(error).__name__}); pass a PNG written by "
                                "this toolkit") from None
    if text is None:
        raise InvalidInputError(f"{path} carries no recipe; only PNGs written by this toolkit do")
    return json.loads(text)
