"""Pixel statistics that judge an image's colours without CLIP: hue of the saturated pixels, and whether an image
shows one clear single-coloured shape."""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image

from training.shapes_world import COLOURS

CHROMATIC = [name for name, rgb in COLOURS.items() if max(rgb) - min(rgb) > 60]
HUES = np.array([colorsys.rgb_to_hsv(*(c / 255 for c in COLOURS[name]))[0] for name in CHROMATIC])


# Every named colour, chromatic ones first: the classes of `pixel_colours` (index len(NAMED) means no named colour).
NAMED = [*CHROMATIC, *(name for name in COLOURS if name not in CHROMATIC)]
MIN_SATURATION, MIN_VALUE = 0.45, 0.3  # a pixel this saturated and bright has a hue
# White is bright and unsaturated; black darker than the shapes' dark grey outline (value 40/255).
WHITE_MAX_SATURATION, WHITE_MIN_VALUE, BLACK_MAX_VALUE = 0.2, 0.8, 0.12


def _hsv(image: Image.Image | np.ndarray) -> np.ndarray:
    """HxWx3 hue, saturation, value in [0, 1] of a PIL image or a uint8 HxWx3 array."""
    image = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
    return np.asarray(image.convert("RGB").convert("HSV"), dtype=np.float32) / 255


def _chromatic(hsv: np.ndarray, min_saturation: float, min_value: float) -> tuple[np.ndarray, np.ndarray]:
    """(which pixels are saturated, the index in CHROMATIC of each pixel's nearest hue)."""
    hue, saturation, value = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    distance = np.abs(hue[..., None] - HUES)
    return (saturation >= min_saturation) & (value >= min_value), np.minimum(distance, 1 - distance).argmin(-1)


def colour_shares(image: Image.Image | np.ndarray, min_saturation: float = MIN_SATURATION,
                  min_value: float = MIN_VALUE) -> dict[str, float]:
    """Fraction of all pixels that are saturated and closest in hue to each named chromatic colour."""
    chromatic, nearest = _chromatic(_hsv(image), min_saturation, min_value)
    return {name: float((chromatic & (nearest == i)).mean()) for i, name in enumerate(CHROMATIC)}


def pixel_colours(image: Image.Image | np.ndarray) -> np.ndarray:
    """Each pixel's named colour as an index into NAMED (HxW ints): saturated pixels by nearest hue (as in
    `colour_shares`), then white and black; len(NAMED) for pixels of no named colour (greys, dark or pale tints)."""
    hsv = _hsv(image)
    chromatic, nearest = _chromatic(hsv, MIN_SATURATION, MIN_VALUE)
    labels = np.where(chromatic, nearest, len(NAMED))
    saturation, value = hsv[..., 1], hsv[..., 2]
    labels[~chromatic & (saturation <= WHITE_MAX_SATURATION) & (value >= WHITE_MIN_VALUE)] = NAMED.index("white")
    labels[value <= BLACK_MAX_VALUE] = NAMED.index("black")
    return labels


def dominant_colour(image: Image.Image | np.ndarray) -> str:
    """The named chromatic colour covering most saturated pixels ('none' if no pixel is saturated)."""
    shares = colour_shares(image)
    name = max(shares, key=shares.get)
    return name if shares[name] > 0 else "none"


# A clear shape covers 1% (a small shape at 32 px) to 35% of the image (a large one covers at most ~20%), and its
# colour takes at least 70% of the saturated pixels; noise and colour fields fail both ways.
SHAPE_AREA = (0.01, 0.35)
SHAPE_PURITY = 0.7


def single_shape_colour(image: Image.Image | np.ndarray) -> str | None:
    """The named chromatic colour of the one clear single-coloured shape an image shows; None when it shows no such
    shape (or only a white, black or pale one)."""
    shares = colour_shares(image)
    name = max(shares, key=shares.get)
    low, high = SHAPE_AREA
    clear = low <= shares[name] <= high and shares[name] >= SHAPE_PURITY * sum(shares.values())
    return name if clear else None
