"""Judge an image of the shapes world by pixel statistics alone (no CLIP): its colour, its shape, and what an edit
changed inside and outside its region.

Colour: every pixel gets a named colour or none (`training.colour_stats.pixel_colours`); white and black pixels
count only in blobs that do not touch the border (a dark or pale background is not a shape). The asked colour
hits when it covers the most such pixels, and at least MIN_AREA of the image.
Shape: the largest connected blob of the asked colour, holes filled, is matched against the shapes world's own
masks of every shape (same centroid and area, the best of a few rotations) by intersection over union; it hits
when the asked shape matches best, with an IoU of at least MIN_IOU (a blob over MAX_AREA is a field, no shape).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np
from PIL import Image

from training.colour_stats import CHROMATIC, NAMED, SHAPE_AREA, pixel_colours
from training.shapes_world import SHAPES, UNIT_POLYGONS, _shape_mask

MIN_AREA = 0.005  # a shape covers at least 0.5% of the image (a small star at 64 px covers about 1%)
MAX_AREA = SHAPE_AREA[1]  # a blob over 35% of the image is a colour field, not a shape
MIN_IOU = 0.6  # below this the blob is no clear shape
# Rotations tried per shape: over its symmetry period (the circle needs one).
ROTATIONS = {"circle": 1, "square": 6, "triangle": 8, "star": 6}
PERIODS = {"circle": 2 * math.pi, "square": math.pi / 2, "triangle": 2 * math.pi / 3, "star": 2 * math.pi / 5}


@dataclass(frozen=True)
class Verdict:
    """What the judge saw: the dominant colour, the shape of the asked colour's largest blob, and the two hits."""

    colour: str  # the dominant named colour, 'none' when no named colour covers MIN_AREA
    shape: str  # the best-matching shape of the asked colour's largest blob, 'none' when it has no clear shape
    iou: float  # that match's intersection over union with its template
    colour_hit: bool
    shape_hit: bool


def _as_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """An image as a uint8 HxWx3 array."""
    return np.asarray(image.convert("RGB")) if isinstance(image, Image.Image) else np.asarray(image, dtype=np.uint8)


def components(mask: np.ndarray) -> list[np.ndarray]:
    """The 4-connected components of a boolean HxW mask, each as a boolean mask, largest first."""
    seen = np.zeros_like(mask, dtype=bool)
    height, width = mask.shape
    found = []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        seen[start] = True
        pixels, queue = [start], deque([start])
        while queue:
            y, x = queue.popleft()
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    pixels.append((ny, nx))
                    queue.append((ny, nx))
        component = np.zeros_like(mask, dtype=bool)
        component[tuple(np.array(pixels).T)] = True
        found.append(component)
    return sorted(found, key=lambda c: -int(c.sum()))


def touches_border(component: np.ndarray) -> bool:
    """Whether a component reaches the image's edge."""
    return bool(component[0].any() or component[-1].any() or component[:, 0].any() or component[:, -1].any())


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """A mask with every background region that does not reach the border filled in."""
    filled = mask.copy()
    for hole in components(~mask):
        if not touches_border(hole):
            filled |= hole
    return filled


def colour_counts(labels: np.ndarray) -> dict[str, int]:
    """Pixels of each named colour that may belong to a shape: all saturated ones, and white and black ones in
    blobs that do not touch the border."""
    counts = {name: int((labels == i).sum()) for i, name in enumerate(CHROMATIC)}
    for name in NAMED[len(CHROMATIC):]:
        counts[name] = sum(int(c.sum()) for c in components(labels == NAMED.index(name)) if not touches_border(c))
    return counts


def dominant(labels: np.ndarray) -> str:
    """The named colour covering the most shape-like pixels, or 'none' below MIN_AREA."""
    counts = colour_counts(labels)
    name = max(counts, key=counts.get)
    return name if counts[name] >= MIN_AREA * labels.size else "none"


def _unit_area(shape: str) -> float:
    """The area of a shape of nominal radius 1 (the shoelace formula; pi for the circle)."""
    if shape == "circle":
        return math.pi
    xs, ys = np.array(UNIT_POLYGONS[shape]).T
    return float(abs(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))) / 2)


def match_shape(blob: np.ndarray) -> tuple[str, float]:
    """(the shape whose template best overlaps the blob, that IoU): templates share the blob's centroid and area."""
    ys, xs = np.nonzero(blob)
    cy, cx = ys.mean() + 0.5, xs.mean() + 0.5  # pixel centres, in the renderer's coordinates
    best = ("none", 0.0)
    for shape in SHAPES:
        radius = math.sqrt(blob.sum() / _unit_area(shape))
        for k in range(ROTATIONS[shape]):
            angle = PERIODS[shape] * k / ROTATIONS[shape]
            template = _shape_mask(shape, cx, cy, radius, angle, blob.shape[0])  # coverage in [0, 1]
            iou = float(np.minimum(template, blob).sum() / max(np.maximum(template, blob).sum(), 1))
            if iou > best[1]:
                best = (shape, iou)
    return best


def judge(image: Image.Image | np.ndarray, colour: str, shape: str) -> Verdict:
    """Whether an image shows the asked colour and shape (see the module's docstring)."""
    labels = pixel_colours(_as_array(image))
    found = dominant(labels)
    blobs = components(labels == NAMED.index(colour))
    blob = fill_holes(blobs[0]) if blobs else None
    shaped = blob is not None and MIN_AREA * blob.size <= blob.sum() <= MAX_AREA * blob.size
    seen, iou = match_shape(blob) if shaped else ("none", 0.0)
    seen = seen if iou >= MIN_IOU else "none"
    return Verdict(found, seen, round(iou, 3), found == colour, seen == shape)


def region_change(before: Image.Image | np.ndarray, after: Image.Image | np.ndarray,
                  region: np.ndarray) -> tuple[float, float]:
    """(mean absolute change inside the region, outside it), in 0-255 levels; `region` is a boolean HxW mask."""
    first, second = _as_array(before).astype(np.float32), _as_array(after).astype(np.float32)
    if first.shape != second.shape:
        first = _as_array(Image.fromarray(first.astype(np.uint8)).resize(second.shape[1::-1], Image.BICUBIC))
        first = first.astype(np.float32)
    change = np.abs(second - first).mean(-1)
    inside = float(change[region].mean()) if region.any() else 0.0
    outside = float(change[~region].mean()) if (~region).any() else 0.0
    return inside, outside
