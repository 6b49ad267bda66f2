"""A synthetic world of coloured shapes with captions, for training and testing CLIP offline.

Every image shows one outlined shape of one colour at one position and size over a muted background.
Sampling is seeded per item, so item ``i`` of a dataset with seed ``s`` is the same everywhere.
A fixed set of (colour, shape) pairs is held out of training to test compositional zero-shot.
Part of the training stream shows named shapes in unnamed colours (hues far from every named colour)
with colour-free captions, and named colours on unnamed shapes with shape-free captions, so that shape
features must not depend on colour nor colour features on shape. Optionally (``shapeless_share``) part of the
stream shows no shape at all: a field of a named colour, blotches of one, or an empty background, captioned as
such, so that a CLIP trained on it does not take a colour field or a blank for "a green square".
"""

from __future__ import annotations

import argparse
import colorsys
import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from guidance.errors import InvalidInputError

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (35, 70, 225),
    "yellow": (245, 220, 30),
    "orange": (250, 140, 20),
    "purple": (140, 45, 185),
    "white": (250, 250, 250),
    "black": (12, 12, 12),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
# Shapes that are drawn but never named (captions say "a red shape"); none resembles a named shape.
UNNAMED_SHAPES: tuple[str, ...] = ("cross", "heart", "crescent")
POSITIONS: dict[str, tuple[float, float]] = {
    "centre": (0.5, 0.5),
    "left": (0.25, 0.5),
    "right": (0.75, 0.5),
    "top": (0.5, 0.25),
    "bottom": (0.5, 0.75),
}
POSITION_PHRASES: dict[str, str] = {
    "centre": "in the centre",
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
}
SIZES: dict[str, float] = {"small": 0.11, "large": 0.22}
BACKGROUND_KINDS: tuple[str, ...] = ("plain", "gradient", "noise")
CANONICAL_BACKGROUND: tuple[int, int, int] = (128, 128, 128)

HELD_OUT_PAIRS: tuple[tuple[str, str], ...] = (
    ("red", "triangle"),
    ("green", "star"),
    ("blue", "circle"),
    ("yellow", "square"),
    ("purple", "star"),
    ("white", "triangle"),
)

CAPTION_TEMPLATES: tuple[str, ...] = (
    "a {colour} {shape}",
    "a {size} {colour} {shape}",
    "a {colour} {shape} {where}",
    "a {size} {colour} {shape} {where}",
    "a photo of a {colour} {shape}",
    "a picture of a {size} {colour} {shape}",
    "a drawing of a {colour} {shape} {where}",
    "{colour} {shape}",
    "a {colour} shape",
    "a {size} {colour} shape",
    "a {colour} shape {where}",
    "a {shape}",
    "a {size} {shape}",
    "a {shape} {where}",
    "a photo of a {shape}",
)
# Captions for shapes in unnamed colours: no colour word.
SHAPE_ONLY_TEMPLATES: tuple[str, ...] = (
    "a {shape}",
    "a {size} {shape}",
    "a {shape} {where}",
    "a photo of a {size} {shape} {where}",
    "a drawing of a {shape}",
)
# Captions for unnamed shapes: no shape word.
COLOUR_ONLY_TEMPLATES: tuple[str, ...] = (
    "a {colour} shape",
    "a {size} {colour} shape",
    "a {colour} shape {where}",
    "a photo of a {size} {colour} shape {where}",
    "a drawing of a {colour} shape",
)
OTHER_COLOUR_RATE = 0.4
OTHER_SHAPE_RATE = 0.2
PASTEL_RATE = 0.35  # light tints give light-coloured shapes (like white ones) colour-free shape training too
MIN_HUE_DISTANCE = 30.0 / 360.0
BACKGROUND_GREY_RANGE = (0.15, 0.85)
MIN_CONTRAST = 100.0
# Every shape has a thin dark outline: a colour-independent cue that lets shape features generalise across colours.
OUTLINE_WIDTH = 0.02
OUTLINE_COLOUR = (40, 40, 40)
# Zero-shot prompt templates; labels carry their article ("an orange star"), see pair_labels().
PROMPT_TEMPLATES: tuple[str, ...] = ("{}", "a photo of {}", "a picture of {}", "a drawing of {}")
SPLITS: tuple[str, ...] = ("train", "held_out", "all")
# Images without a shape (``ShapesDataset(shapeless_share=...)``), each kind with its captions.
SHAPELESS_TEMPLATES: dict[str, tuple[str, ...]] = {
    "field": ("a {colour} background", "a plain {colour} image", "a {colour} field", "{colour} everywhere"),
    "blotches": ("{colour} blotches", "a {colour} pattern", "{colour} smudges", "a messy {colour} texture"),
    "empty": ("an empty background", "a plain background", "nothing", "an empty image"),
}

# --- Chinese: the same world in Chinese words, for bilingual captions (`ShapesDataset(chinese_share=...)`) ---
COLOURS_ZH: dict[str, str] = {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色", "orange": "橙色",
                              "purple": "紫色", "white": "白色", "black": "黑色"}
# Each shape's words (the first is the canonical one) and its measure word: 一个圆形, 一颗五角星.
SHAPES_ZH: dict[str, tuple[str, ...]] = {"circle": ("圆形", "圆"), "square": ("正方形", "方块"),
                                         "triangle": ("三角形",), "star": ("五角星", "星星")}
MEASURE_WORDS_ZH: dict[str, str] = {"circle": "个", "square": "个", "triangle": "个", "star": "颗"}
SIZES_ZH: dict[str, str] = {"small": "小", "large": "大"}
POSITIONS_ZH: dict[str, str] = {"centre": "中间", "left": "左边", "right": "右边", "top": "上面", "bottom": "下面"}
CAPTION_TEMPLATES_ZH: tuple[str, ...] = (
    "一{m}{colour}的{shape}",
    "{colour}的{shape}",
    "{colour}{shape}",
    "一{m}{size}{colour}{shape}",
    "{where}有一{m}{colour}的{shape}",
    "{where}的{colour}{shape}",
    "一张{colour}{shape}的照片",
    "一幅{colour}{shape}的画",
    "一{m}{size}的{colour}{shape}在{where}",
    "一个{colour}的图形",
    "{colour}的图形",
    "一{m}{shape}",
    "{where}有一{m}{shape}",
    "一张{shape}的照片",
)
SHAPE_ONLY_TEMPLATES_ZH: tuple[str, ...] = (
    "一{m}{shape}", "一{m}{size}{shape}", "{where}有一{m}{shape}", "一张{shape}的照片", "一幅{shape}的画",
)
COLOUR_ONLY_TEMPLATES_ZH: tuple[str, ...] = (
    "一个{colour}的图形", "{colour}的图形", "{where}有一个{colour}的图形", "一个{size}的{colour}图形",
    "一幅{colour}图形的画",
)
# Unnamed shapes get no shape word in Chinese either; templates above use 图形 ("shape") for them.
PROMPT_TEMPLATES_ZH: tuple[str, ...] = ("{}", "一张{}的照片", "一幅{}的图片", "一幅{}的画")


@dataclass(frozen=True)
class Background:
    """A muted background: plain colour, linear gradient from ``colour`` to ``colour_b``, or noisy colour."""

    kind: str = "plain"
    colour: tuple[int, int, int] = CANONICAL_BACKGROUND
    colour_b: tuple[int, int, int] = CANONICAL_BACKGROUND
    angle: float = 0.0
    noise: float = 0.0


@dataclass(frozen=True)
class ShapeSpec:
    """Everything that determines one image of the world (jitter aside)."""

    colour: str | tuple[int, int, int]
    shape: str
    position: str = "centre"
    size: str = "large"
    background: Background = Background()


def held_out_pairs() -> tuple[tuple[str, str], ...]:
    """The (colour, shape) pairs never shown in training."""
    return HELD_OUT_PAIRS


def pairs_for_split(split: str) -> list[tuple[str, str]]:
    """The (colour, shape) pairs a split draws from: ``train``, ``held_out`` or ``all``."""
    if split not in SPLITS:
        raise InvalidInputError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    every = [(c, s) for c in COLOURS for s in SHAPES]
    if split == "all":
        return every
    held = set(HELD_OUT_PAIRS)
    return [p for p in every if (p in held) == (split == "held_out")]


def _check_vocab(colour: str | tuple[int, int, int], shape: str, position: str, size: str) -> None:
    if not isinstance(colour, str) and (len(colour) != 3 or not all(0 <= int(v) <= 255 for v in colour)):
        raise InvalidInputError(f"colour {colour!r} is neither a colour name nor an RGB triple in 0..255")
    for word, vocab, what in (
        (colour if isinstance(colour, str) else "red", COLOURS, "colour"),
        (shape, SHAPES + UNNAMED_SHAPES, "shape"),
        (position, POSITIONS, "position"),
        (size, SIZES, "size"),
    ):
        if word not in vocab:
            raise InvalidInputError(f"unknown {what} {word!r}; use one of {', '.join(vocab)}")


def _background_array(background: Background | tuple[int, int, int], n: int, rng: np.random.Generator | None) -> np.ndarray:
    """The background as float32 HxWx3 in [0, 255]."""
    if not isinstance(background, Background):
        background = Background(colour=tuple(background))
    a = np.asarray(background.colour, dtype=np.float32)
    img = np.broadcast_to(a, (n, n, 3)).copy()
    if background.kind == "gradient":
        b = np.asarray(background.colour_b, dtype=np.float32)
        yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / max(n - 1, 1)
        t = (xx * math.cos(background.angle) + yy * math.sin(background.angle))
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        img = a + (b - a) * t[..., None]
    if background.noise > 0:
        noise_rng = rng if rng is not None else np.random.default_rng(0)
        img = img + noise_rng.normal(0.0, background.noise * 255.0, size=img.shape).astype(np.float32)
    return np.clip(img, 0.0, 255.0)


def _regular(count: int, radii: tuple[float, ...], start: float) -> list[tuple[float, float]]:
    """Vertices of a regular polygon (one radius) or star (two alternating radii), unit scale."""
    return [(radii[k % len(radii)] * math.cos(start + 2 * math.pi * k / count),
             radii[k % len(radii)] * math.sin(start + 2 * math.pi * k / count)) for k in range(count)]


def _crescent() -> list[tuple[float, float]]:
    """A unit circle minus a circle of radius 0.8 shifted right by 0.45: outer arc, then inner arc back."""
    outer = [math.radians(a) for a in np.linspace(51.3, 308.7, 24)]
    inner = [math.radians(a) for a in np.linspace(282.6, 77.4, 18)]
    return [(math.cos(t), math.sin(t)) for t in outer] + [(0.45 + 0.8 * math.cos(t), 0.8 * math.sin(t)) for t in inner]


def _heart() -> list[tuple[float, float]]:
    """The classic parametric heart, point down, unit scale."""
    ts = np.linspace(0, 2 * math.pi, 40, endpoint=False)
    return [(16 * math.sin(t) ** 3 / 16, -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)) / 16)
            for t in ts]


UNIT_POLYGONS: dict[str, list[tuple[float, float]]] = {
    "square": _regular(4, (0.85 * math.sqrt(2),), math.pi / 4),
    "triangle": _regular(3, (1.2,), -math.pi / 2),
    "star": _regular(10, (1.15, 0.48), -math.pi / 2),
    "cross": [(0.3, -1), (0.3, -0.3), (1, -0.3), (1, 0.3), (0.3, 0.3), (0.3, 1),
              (-0.3, 1), (-0.3, 0.3), (-1, 0.3), (-1, -0.3), (-0.3, -0.3), (-0.3, -1)],
    "heart": _heart(),
    "crescent": _crescent(),
}


def _shape_polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of a non-circular shape of nominal radius ``r``, rotated by ``angle`` (circles are ellipses)."""
    cos, sin = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * cos - y * sin), cy + r * (x * sin + y * cos)) for x, y in UNIT_POLYGONS[shape]]


def _shape_mask(shape: str, cx: float, cy: float, r: float, angle: float, n: int, outline: float = 0.0,
                supersample: int = 4) -> np.ndarray:
    """An anti-aliased coverage mask (float32 HxW in [0, 1]) of one shape, or of its outline ``outline`` pixels wide."""
    big = n * supersample
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    s = supersample
    style = {"fill": None, "outline": 255, "width": max(1, round(outline * s))} if outline else {"fill": 255}
    if shape == "circle":
        draw.ellipse([(cx - r) * s, (cy - r) * s, (cx + r) * s, (cy + r) * s], **style)
    else:
        draw.polygon([(x * s, y * s) for x, y in _shape_polygon(shape, cx, cy, r, angle)], **style)
    small = canvas.resize((n, n), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def render_shape_image(
    colour: str | tuple[int, int, int],
    shape: str,
    position: str = "centre",
    size: str = "large",
    background: Background | tuple[int, int, int] = CANONICAL_BACKGROUND,
    image_size: int = 64,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Render one shape (colour: a name or RGB) as uint8 HxWx3; ``rng`` adds jitter, None renders it exactly."""
    _check_vocab(colour, shape, position, size)
    if image_size < 16:
        raise InvalidInputError(f"image_size {image_size} is too small; use 16 or more")
    n = image_size
    r = SIZES[size] * n
    fx, fy = POSITIONS[position]
    angle = 0.0
    rgb = _rgb(colour)
    if rng is not None:
        rgb = rgb + rng.uniform(-12, 12, size=3).astype(np.float32)
        r *= rng.uniform(0.88, 1.12)
        fx += rng.uniform(-0.04, 0.04)
        fy += rng.uniform(-0.04, 0.04)
        angle = rng.uniform(-math.pi, math.pi) if shape == "star" else rng.uniform(-0.3, 0.3)
    margin = 1.2 * r + 1.0
    cx = float(np.clip(fx * n, margin, n - margin))
    cy = float(np.clip(fy * n, margin, n - margin))
    mask = _shape_mask(shape, cx, cy, r, angle, n)[..., None]
    bg = _background_array(background, n, rng)
    img = bg * (1.0 - mask) + np.clip(rgb, 0, 255) * mask
    if OUTLINE_WIDTH:
        edge = _shape_mask(shape, cx, cy, r, angle, n, OUTLINE_WIDTH * n)[..., None]
        img = img * (1.0 - edge) + np.asarray(OUTLINE_COLOUR, dtype=np.float32) * edge
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def render_shapeless(kind: str, colour: str, background: Background, image_size: int = 64,
                     rng: np.random.Generator | None = None) -> np.ndarray:
    """Render an image without a shape as uint8 HxWx3: a ``field`` of ``colour`` (shaded and noisy), ``blotches`` of
    it (thresholded low-frequency noise, no outline) over ``background``, or the ``empty`` background alone."""
    if kind not in SHAPELESS_TEMPLATES:
        raise InvalidInputError(f"unknown shapeless kind {kind!r}; use one of {', '.join(SHAPELESS_TEMPLATES)}")
    _check_vocab(colour, "circle", "centre", "large")
    rng = rng if rng is not None else np.random.default_rng(0)
    n = image_size
    bg = _background_array(background, n, rng)
    if kind == "empty":
        return np.clip(np.rint(bg), 0, 255).astype(np.uint8)
    rgb = np.clip(_rgb(colour) + rng.uniform(-12, 12, size=3).astype(np.float32), 0, 255)
    if kind == "field":
        shade = _background_array(Background("gradient", (0, 0, 0), (255, 255, 255), float(rng.uniform(0, 2 * math.pi))),
                                  n, None)[..., :1] / 255.0 - 0.5
        img = rgb * (1.0 + float(rng.uniform(0.0, 0.3)) * shade)
        img = img + rng.normal(0.0, float(rng.uniform(0.0, 0.05)) * 255.0, size=img.shape).astype(np.float32)
        return np.clip(np.rint(img), 0, 255).astype(np.uint8)
    cells = int(rng.integers(3, 7))
    coarse = torch.from_numpy(rng.normal(size=(1, 1, cells, cells)).astype(np.float32))
    smooth = torch.nn.functional.interpolate(coarse, size=(n, n), mode="bicubic", align_corners=False)[0, 0].numpy()
    mask = (smooth > np.quantile(smooth, 1.0 - rng.uniform(0.2, 0.6))).astype(np.float32)[..., None]
    img = bg * (1.0 - mask) + rgb * mask
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _rgb(colour: str | tuple[int, int, int]) -> np.ndarray:
    return np.asarray(COLOURS[colour] if isinstance(colour, str) else colour, dtype=np.float32)


def sample_background(rng: np.random.Generator, shape_colour: str | tuple[int, int, int] = "red") -> Background:
    """A random muted (greyish) background whose colours all differ from ``shape_colour`` by MIN_CONTRAST or more."""
    kind = BACKGROUND_KINDS[int(rng.integers(len(BACKGROUND_KINDS)))]
    target = _rgb(shape_colour)

    def muted() -> tuple[int, int, int]:
        while True:
            grey = rng.uniform(*BACKGROUND_GREY_RANGE)
            rgb = tuple(int(round(255 * float(np.clip(grey + rng.uniform(-0.08, 0.08), 0, 1)))) for _ in range(3))
            if np.linalg.norm(np.asarray(rgb, dtype=np.float32) - target) >= MIN_CONTRAST:
                return rgb

    return Background(
        kind=kind,
        colour=muted(),
        colour_b=muted(),
        angle=float(rng.uniform(0, 2 * math.pi)),
        noise=float(rng.uniform(0.02, 0.06)) if kind == "noise" else 0.0,
    )


def _named_hues() -> list[float]:
    hsv = [colorsys.rgb_to_hsv(*(v / 255 for v in rgb)) for rgb in COLOURS.values()]
    return [h for h, saturation, _ in hsv if saturation > 0.3]


def hue_distance(a: float, b: float) -> float:
    """Distance between two hues in [0, 1) on the colour wheel (at most 0.5)."""
    d = abs(a - b) % 1.0
    return min(d, 1.0 - d)


def sample_other_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    """A saturated or pastel RGB colour whose hue is at least MIN_HUE_DISTANCE from every named chromatic colour."""
    hues = _named_hues()
    while True:
        hue = float(rng.uniform(0, 1))
        if min(hue_distance(hue, h) for h in hues) >= MIN_HUE_DISTANCE:
            break
    if rng.random() < PASTEL_RATE:
        saturation, value = rng.uniform(0.25, 0.5), rng.uniform(0.9, 1.0)
    else:
        saturation, value = rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0)
    return tuple(int(round(255 * v)) for v in colorsys.hsv_to_rgb(hue, saturation, value))


def sample_spec(rng: np.random.Generator, split: str = "train", other_colour_rate: float = 0.0,
                other_shape_rate: float = 0.0, sizes: Sequence[str] = tuple(SIZES)) -> ShapeSpec:
    """A random spec whose (colour, shape) pair belongs to ``split``, of one of ``sizes``; at the given rates the
    colour or the shape is replaced by an unnamed one (never both)."""
    pairs = pairs_for_split(split)
    colour, shape = pairs[int(rng.integers(len(pairs)))]
    draw = rng.random()
    if draw < other_colour_rate:
        colour = sample_other_colour(rng)
    elif draw < other_colour_rate + other_shape_rate:
        shape = UNNAMED_SHAPES[int(rng.integers(len(UNNAMED_SHAPES)))]
    position = list(POSITIONS)[int(rng.integers(len(POSITIONS)))]
    size = sizes[int(rng.integers(len(sizes)))]
    return ShapeSpec(colour, shape, position, size, sample_background(rng, colour))


def with_articles(text: str) -> str:
    """Turn 'a' into 'an' before a vowel: 'a orange star' -> 'an orange star'."""
    return re.sub(r"\ba (?=[aeiou])", "an ", text)


def pair_labels(language: str = "en") -> list[str]:
    """Zero-shot labels for every (colour, shape) pair, colour-major: 'a red circle', ... ('zh': '一个红色的圆形', ...)."""
    if language == "zh":
        return [f"一{MEASURE_WORDS_ZH[s]}{COLOURS_ZH[c]}的{SHAPES_ZH[s][0]}" for c in COLOURS for s in SHAPES]
    return [with_articles(f"a {c} {s}") for c in COLOURS for s in SHAPES]


def colour_labels(language: str = "en") -> list[str]:
    """Zero-shot labels for colours alone: 'a red shape', ... ('zh': '一个红色的图形', ...)."""
    if language == "zh":
        return [f"一个{COLOURS_ZH[c]}的图形" for c in COLOURS]
    return [with_articles(f"a {c} shape") for c in COLOURS]


def shape_labels(language: str = "en") -> list[str]:
    """Zero-shot labels for shapes alone: 'a circle', ... ('zh': '一个圆形', ...)."""
    if language == "zh":
        return [f"一{MEASURE_WORDS_ZH[s]}{SHAPES_ZH[s][0]}" for s in SHAPES]
    return [with_articles(f"a {s}") for s in SHAPES]


def caption_templates(spec: ShapeSpec) -> tuple[str, ...]:
    """The templates that can describe a spec: colour-free ones for unnamed colours, shape-free ones for unnamed shapes."""
    if not isinstance(spec.colour, str):
        return SHAPE_ONLY_TEMPLATES
    return COLOUR_ONLY_TEMPLATES if spec.shape in UNNAMED_SHAPES else CAPTION_TEMPLATES


def caption_templates_zh(spec: ShapeSpec) -> tuple[str, ...]:
    """The Chinese templates that can describe a spec (colour-free / shape-free ones as in English)."""
    if not isinstance(spec.colour, str):
        return SHAPE_ONLY_TEMPLATES_ZH
    return COLOUR_ONLY_TEMPLATES_ZH if spec.shape in UNNAMED_SHAPES else CAPTION_TEMPLATES_ZH


def caption_zh(spec: ShapeSpec, rng: np.random.Generator) -> str:
    """A Chinese caption of a spec: a random template and, where a shape has several words, a random one."""
    templates = caption_templates_zh(spec)
    template = templates[int(rng.integers(len(templates)))]
    words = SHAPES_ZH.get(spec.shape, ("图形",))
    return template.format(colour=COLOURS_ZH.get(spec.colour, "") if isinstance(spec.colour, str) else "",
                           shape=words[int(rng.integers(len(words)))], m=MEASURE_WORDS_ZH.get(spec.shape, "个"),
                           size=SIZES_ZH[spec.size], where=POSITIONS_ZH[spec.position])


# --- French: a caption style no shipped model was trained on, for the fine-tuning example (README) ---------
# Shape nouns with their article, and each colour's (masculine, feminine) adjective (une étoile verte).
SHAPES_FR: dict[str, tuple[str, bool]] = {"circle": ("cercle", False), "square": ("carré", False),
                                          "triangle": ("triangle", False), "star": ("étoile", True)}
COLOURS_FR: dict[str, tuple[str, str]] = {
    "red": ("rouge", "rouge"), "green": ("vert", "verte"), "blue": ("bleu", "bleue"), "yellow": ("jaune", "jaune"),
    "orange": ("orange", "orange"), "purple": ("violet", "violette"), "white": ("blanc", "blanche"),
    "black": ("noir", "noire")}
CAPTION_LANGUAGES: tuple[str, ...] = ("en", "zh", "fr")


def caption_fr(spec: ShapeSpec) -> str:
    """A French caption of a spec: 'un cercle rouge', 'une étoile verte'; 'un cercle' for an unnamed colour,
    'une forme rouge' for an unnamed shape."""
    noun, feminine = SHAPES_FR.get(spec.shape, ("forme", True))
    colour = COLOURS_FR[spec.colour][feminine] if isinstance(spec.colour, str) else ""
    return f"{'une' if feminine else 'un'} {noun} {colour}".strip()


def pair_label(spec: ShapeSpec, language: str) -> str:
    """The zero-shot label of a spec's (colour, shape) pair in ``language`` ('other' when either is unnamed)."""
    if not isinstance(spec.colour, str) or spec.shape not in SHAPES:
        return "other"
    if language == "fr":
        return caption_fr(spec)
    return pair_labels(language)[list(COLOURS).index(spec.colour) * len(SHAPES) + list(SHAPES).index(spec.shape)]


def caption_for(spec: ShapeSpec, template: str) -> str:
    """Fill a caption template with a spec's words (with 'an' before vowels)."""
    text = template.format(colour=spec.colour, shape=spec.shape, size=spec.size,
                           where=POSITION_PHRASES.get(spec.position, ""))
    return with_articles(text)


def _item_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, index])


class ShapesDataset(Dataset):
    """Map-style dataset of (image CHW float in [0, 1], caption); item ``i`` depends only on (seed, i, split)."""

    def __init__(self, length: int, seed: int = 0, split: str = "train", image_size: int = 64,
                 unnamed: bool | None = None, chinese_share: float = 0.0, sizes: Sequence[str] = tuple(SIZES),
                 shapeless_share: float = 0.0) -> None:
        """Create ``length`` items of ``split`` with shapes of ``sizes``, mixing in unnamed colours and shapes if
        ``unnamed`` (default: for train), with a Chinese caption instead of the English one for a ``chinese_share`` of
        the items (same images), and an image without a shape (captioned in English) for a ``shapeless_share``."""
        if not sizes or any(size not in SIZES for size in sizes):
            raise InvalidInputError(f"sizes must be some of {', '.join(SIZES)}, got {list(sizes)}")
        self.sizes = tuple(sizes)
        pairs_for_split(split)
        if not 0 <= chinese_share <= 1:
            raise InvalidInputError(f"chinese_share must be between 0 and 1, got {chinese_share}")
        self.chinese_share = chinese_share
        if not 0 <= shapeless_share <= 1:
            raise InvalidInputError(f"shapeless_share must be between 0 and 1, got {shapeless_share}")
        self.shapeless_share = shapeless_share
        self.length = length
        self.seed = seed
        self.split = split
        self.image_size = image_size
        self.unnamed = split == "train" if unnamed is None else unnamed

    def __len__(self) -> int:
        """Number of items."""
        return self.length

    def _draw(self, index: int) -> tuple[ShapeSpec, str, np.random.Generator]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        rng = _item_rng(self.seed, index)
        if self.shapeless_share:  # its own generator: the other items stay as they were
            shapeless_rng = np.random.default_rng([self.seed, index, 87])
            if shapeless_rng.random() < self.shapeless_share:
                return self._draw_shapeless(shapeless_rng)
        rates = (OTHER_COLOUR_RATE, OTHER_SHAPE_RATE) if self.unnamed else (0.0, 0.0)
        spec = sample_spec(rng, self.split, *rates, sizes=self.sizes)
        templates = caption_templates(spec)
        caption = caption_for(spec, templates[int(rng.integers(len(templates)))])
        if self.chinese_share:  # its own generator: the image and the English stream stay as they were
            language_rng = np.random.default_rng([self.seed, index, 86])
            if language_rng.random() < self.chinese_share:
                caption = caption_zh(spec, language_rng)
        return spec, caption, rng

    @staticmethod
    def _draw_shapeless(rng: np.random.Generator) -> tuple[ShapeSpec, str, np.random.Generator]:
        """A shapeless item: its kind is the spec's shape, and its caption one of that kind's."""
        kind = list(SHAPELESS_TEMPLATES)[int(rng.integers(len(SHAPELESS_TEMPLATES)))]
        colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
        spec = ShapeSpec(colour, kind, position="", background=sample_background(rng, colour))
        templates = SHAPELESS_TEMPLATES[kind]
        return spec, caption_for(spec, templates[int(rng.integers(len(templates)))]), rng

    def describe(self, index: int) -> tuple[ShapeSpec, str]:
        """Spec and caption of item ``index``, without rendering it."""
        spec, caption, _ = self._draw(index)
        return spec, caption

    def item(self, index: int) -> tuple[np.ndarray, str, ShapeSpec]:
        """Image (uint8 HxWx3), caption and spec of item ``index``."""
        spec, caption, rng = self._draw(index)
        if spec.shape in SHAPELESS_TEMPLATES:
            return render_shapeless(spec.shape, spec.colour, spec.background, self.image_size, rng), caption, spec
        image = render_shape_image(
            spec.colour, spec.shape, spec.position, spec.size, spec.background, self.image_size, rng
        )
        return image, caption, spec

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        """Image as a float CHW tensor in [0, 1], and its caption."""
        image, caption, _ = self.item(index)
        return torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0), caption


def chinese_to_english_words(text: str) -> str:
    """Chinese colour, shape, size and position words replaced by their English ones ('红色的圆形' -> ' red 的 circle ')."""
    words = {**{zh: en for en, zh in COLOURS_ZH.items()}, **{zh[0]: en for en, zh in COLOURS_ZH.items()},
             **{zh: en for en, names in SHAPES_ZH.items() for zh in names}, "星": "star",
             **{zh: en for en, zh in SIZES_ZH.items()}, **{zh: en for en, zh in POSITIONS_ZH.items()}}
    for word in sorted(words, key=len, reverse=True):
        text = text.replace(word, f" {words[word]} ")
    return text


def parse_caption(text: str) -> ShapeSpec:
    """Read a colour, a shape and optionally a size and position from a caption like 'a small red circle on the left'
    or '左边有一个小的红色圆形'."""
    words = re.findall(r"[a-z]+", chinese_to_english_words(text).lower())
    aliases = {"center": "centre", "middle": "centre", "big": "large"}
    words = [aliases.get(w, w) for w in words]

    def pick(vocab, what: str, default: str | None) -> str:
        found = [w for w in words if w in vocab]
        if not found and default is None:
            raise InvalidInputError(f"caption {text!r} names no {what}; use one of {', '.join(vocab)}")
        return found[0] if found else default

    return ShapeSpec(
        colour=pick(COLOURS, "colour", None),
        shape=pick(SHAPES, "shape", None),
        position=pick(POSITIONS, "position", "centre"),
        size=pick(SIZES, "size", "large"),
    )


def render_canonical(text: str, image_size: int = 64) -> np.ndarray:
    """Render the exact, jitter-free image a caption describes (default: large, centred, on plain grey)."""
    spec = parse_caption(text)
    return render_shape_image(spec.colour, spec.shape, spec.position, spec.size, spec.background, image_size)


def write_dataset(out: Path, count: int, seed: int = 0, split: str = "train", image_size: int = 64,
                  language: str = "en", unnamed: bool | None = None) -> Path:
    """Write ``count`` PNGs under ``out/images`` and ``out/captions.csv``; return the CSV path. Captions are in
    ``language`` ('en' as drawn, 'zh' or 'fr'), and the ``label`` column holds each image's (colour, shape) pair
    label in it, for a zero-shot evaluation; ``unnamed=False`` draws named colours and shapes only."""
    if language not in CAPTION_LANGUAGES:
        raise InvalidInputError(f"unknown caption language {language!r}; choose one of {', '.join(CAPTION_LANGUAGES)}")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    dataset = ShapesDataset(count, seed, split, image_size, unnamed=unnamed)
    csv_path = out / "captions.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filepath", "caption", "label", "colour", "shape", "position", "size"])
        for i in range(count):
            image, caption, spec = dataset.item(i)
            if language == "zh":
                caption = caption_zh(spec, np.random.default_rng([seed, i, 86]))
            elif language == "fr":
                caption = caption_fr(spec)
            name = f"images/{i:06d}.png"
            Image.fromarray(image).save(out / name)
            colour = spec.colour if isinstance(spec.colour, str) else "other"
            shape = spec.shape if spec.shape in SHAPES else "other"
            writer.writerow([name, caption, pair_label(spec, language), colour, shape, spec.position, spec.size])
    return csv_path


def main(argv: list[str] | None = None) -> None:
    """CLI: write a seeded set of shape images and a captions.csv."""
    parser = argparse.ArgumentParser(prog="python -m training.shapes_world", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder (images/ and captions.csv)")
    parser.add_argument("--count", type=int, default=1000, help="number of images")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--split", choices=SPLITS, default="train", help="which (colour, shape) pairs to draw")
    parser.add_argument("--image-size", type=int, default=64, help="side of the square images in pixels")
    parser.add_argument("--language", choices=CAPTION_LANGUAGES, default="en",
                        help="language of the captions and labels (fr: a style no shipped model knows)")
    parser.add_argument("--named-only", action="store_true",
                        help="only named colours and shapes (an evaluation set: every label is a pair)")
    args = parser.parse_args(argv)
    try:
        path = write_dataset(args.out, args.count, args.seed, args.split, args.image_size, args.language,
                             False if args.named_only else None)
    except InvalidInputError as exc:
        parser.exit(2, f"error: {exc}\n")
    print(f"wrote {args.count} images and {path}")


if __name__ == "__main__":
    main()
