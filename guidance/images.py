"""Image files in and out: [0, 1] BCHW tensors, PNGs that carry the recipe that made them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from .errors import InvalidInputError

RECIPE_KEY = "clip-guidance-recipe"


def load_image(path: str | Path, size: tuple[int, int] | None = None, mode: str = "RGB") -> torch.Tensor:
    """Read an image file as a (1, C, H, W) float tensor in [0, 1], optionally resized to (width, height)."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"image file not found: {path}")
    try:
        with Image.open(path) as image:
            image = image.convert(mode)
    except (UnidentifiedImageError, OSError) as error:
        raise InvalidInputError(f"cannot read image {path} ({type(error).__name__}); use a PNG, JPEG or WebP file") from None
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


def save_png(image: Image.Image | torch.Tensor, path: str | Path, recipe: dict[str, Any]) -> Path:
    """Save a PNG whose text chunks hold the recipe (JSON) and each parameter as its own chunk."""
    image = tensor_to_pil(image) if isinstance(image, torch.Tensor) else image
    path = png_output_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngImagePlugin.PngInfo()
    info.add_itxt(RECIPE_KEY, json.dumps(recipe, default=str, sort_keys=True))
    for key, value in recipe.items():
        info.add_itxt(str(key), value if isinstance(value, str) else json.dumps(value, default=str))
    image.save(path, pnginfo=info)
    return path


def read_recipe(path: str | Path) -> dict[str, Any]:
    """The recipe stored in a PNG by save_png."""
    try:
        with Image.open(path) as image:
            text = image.text.get(RECIPE_KEY) if hasattr(image, "text") else None
    except (UnidentifiedImageError, OSError) as error:
        raise InvalidInputError(f"cannot read a recipe from {path} ({type(error).__name__}); pass a PNG written by "
                                "this toolkit") from None
    if text is None:
        raise InvalidInputError(f"{path} carries no recipe; only PNGs written by this toolkit do")
    return json.loads(text)
