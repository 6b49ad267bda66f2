"""Meaning benchmark: does each method's image show what its prompt says? Judged by pixel statistics, not CLIP.

Every text-to-image method and every edit runs with the shipped shapes-tiny models over a grid of the shapes
world's colours x shapes x seeds, through each pipeline's Python API (one model load per method). Images are
judged by bench/judge.py (colour hit, shape hit; for edits also the mean change inside and outside the edited
region). Prints a table per method, writes JSON, every image (with its recipe, under images/METHOD/) and a
contact sheet (one row per method: the first seed of every prompt).

    python bench/meaning.py                       # the full grid: 8 colours x 4 shapes x 3 seeds, every method
    python bench/meaning.py --quick               # 3 prompts, 1 seed: a smoke test
    python bench/meaning.py --methods diffusion_sampler vqgan_clip --seeds 1
    python bench/meaning.py --methods vqgan_clip --quick --precision bf16   # the same judged in bf16 autocast
    python bench/meaning.py --methods vqgan_clip --set augment=geometric lr=0.2   # try other call settings

Settings: the CLI defaults, except the sizes and steps the README's offline demo uses for the shapes models
(VQGAN at 64 px, 100 steps, 16 cutouts; pixels the same with the CLI's 32 cutouts; the DDPMs at their native 32 px,
50 steps, 16 cutouts: text to image on shapes-tiny-text, edits on shapes-tiny). They are in METHODS and in the JSON.
Edits recolour a rendered shape: masked ones in the centre square, directional ones with --source-text over the
whole image, localised ones with --source-text and --mask auto.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from judge import judge, region_change
from runner import machine

from guidance.images import save_png
from training.shapes_world import COLOURS, SHAPES, render_shape_image, with_articles

RESULTS = Path(__file__).resolve().parent / "results"
QUICK_PROMPTS = (("red", "circle"), ("blue", "square"), ("yellow", "triangle"))
CELL = 64  # contact-sheet cell side in pixels
LABEL_WIDTH = 200


@dataclass(frozen=True)
class Method:
    """One benchmarked method: its pipeline (loaded once), the call settings, and whether it edits an image."""

    name: str
    load: Callable[[], Any]  # () -> the pipeline
    settings: dict[str, Any]  # the pipeline call's settings (besides prompt, seed and the edit's inputs)
    size: int  # the image side it works at
    edit: str | None = None  # None (text to image), 'masked', 'directional' or 'localised' (directional, --mask auto)
    recorded: dict[str, Any] = field(default_factory=dict)  # settings fixed at load time, recorded in the JSON


def _vqgan() -> Any:
    from pipelines.vqgan_clip import VQGANCLIPPipeline

    return VQGANCLIPPipeline.from_pretrained("shapes-tiny", ["shapes-tiny"], device="cpu")


def _pixels() -> Any:
    from pipelines.pixels_clip import PixelsCLIPPipeline

    return PixelsCLIPPipeline.from_pretrained("fft", ["shapes-tiny"], device="cpu")


def _diffusion(model: str) -> Callable[[], Any]:
    """Loads CLIP-guided diffusion on the shipped DDPM `model`."""
    def load() -> Any:
        from pipelines.clip_guided_diffusion import CLIPGuidedDiffusionPipeline

        return CLIPGuidedDiffusionPipeline.from_pretrained(model, ["shapes-tiny"], device="cpu")
    return load


def _noise(model: str) -> Callable[[], Any]:
    """Loads noise optimisation on the shipped DDPM `model`."""
    def load() -> Any:
        from pipelines.noise_optimization import NoiseOptimizationPipeline

        return NoiseOptimizationPipeline.from_pretrained(model, ["shapes-tiny"], device="cpu",
                                                         sampler_steps=NOISE_RECORDED["sampler_steps"])
    return load


OPTIMISED = {"size": 64, "steps": 100, "cutn": 16}
PIXELS = {**OPTIMISED, "cutn": 32}  # the CLI's default: at 16 cutouts the pixels' speckle wins more often
SAMPLED = {"steps": 50, "cutn": 16}
NOISE_RECORDED = {"method": "noise", "sampler_steps": 4}  # the short sampler's DDIM steps
NOISE_CALL = {"steps": 30, "cutn": 16}  # steps: the noise's optimisation iterations
# Text to image runs on the DDPM that follows the prompt (shapes-tiny-text, at the cfg_scale its folder recommends);
# edits on the unconditional one, which reconstructs a rendered image (the text one's DDIM inversion turns its
# background to noise: 24 levels of change outside the shape).
TEXT_DDPM, EDIT_DDPM = "shapes-tiny-text", "shapes-tiny"
METHODS: dict[str, Method] = {m.name: m for m in (
    Method("vqgan_clip", _vqgan, OPTIMISED, 64),
    Method("pixels_clip", _pixels, PIXELS, 64),
    Method("diffusion_sampler", _diffusion(TEXT_DDPM), SAMPLED, 32, recorded={"model": TEXT_DDPM}),
    Method("diffusion_noise", _noise(TEXT_DDPM), NOISE_CALL, 32, recorded={**NOISE_RECORDED, "model": TEXT_DDPM}),
    Method("vqgan_masked", _vqgan, OPTIMISED, 64, edit="masked"),
    Method("vqgan_directional", _vqgan, OPTIMISED, 64, edit="directional"),
    Method("diffusion_masked", _diffusion(EDIT_DDPM), SAMPLED, 32, edit="masked", recorded={"model": EDIT_DDPM}),
    Method("diffusion_inversion", _diffusion(EDIT_DDPM), SAMPLED, 32, edit="directional",
           recorded={"model": EDIT_DDPM}),
    Method("noise_masked", _noise(EDIT_DDPM), NOISE_CALL, 32, edit="masked",
           recorded={**NOISE_RECORDED, "model": EDIT_DDPM}),
    Method("noise_directional", _noise(EDIT_DDPM), NOISE_CALL, 32, edit="directional",
           recorded={**NOISE_RECORDED, "model": EDIT_DDPM}),
    Method("vqgan_localised", _vqgan, OPTIMISED, 64, edit="localised"),
    Method("diffusion_localised", _diffusion(EDIT_DDPM), SAMPLED, 32, edit="localised",
           recorded={"model": EDIT_DDPM}),
    Method("noise_localised", _noise(EDIT_DDPM), NOISE_CALL, 32, edit="localised",
           recorded={**NOISE_RECORDED, "model": EDIT_DDPM}),
)}


def prompt_of(colour: str, shape: str) -> str:
    """The prompt asking for a colour and a shape: 'a red circle', 'an orange star'."""
    return with_articles(f"a {colour} {shape}")


def source_colour(colour: str) -> str:
    """The colour an edit starts from: the next one in the world's list (red -> green, ..., black -> red)."""
    names = list(COLOURS)
    return names[(names.index(colour) + 1) % len(names)]


def edit_region(size: int) -> np.ndarray:
    """The masked edit's region: the centre square holding a large centred shape (boolean HxW)."""
    region = np.zeros((size, size), dtype=bool)
    low, high = round(0.2 * size), round(0.8 * size)
    region[low:high, low:high] = True
    return region


def edit_inputs(method: Method, colour: str, shape: str) -> tuple[np.ndarray, dict[str, Any], np.ndarray]:
    """(the source image, the call's edit options, the region judged as 'inside') for an edit to colour."""
    source = render_shape_image(source_colour(colour), shape, image_size=method.size)
    tensor = torch.from_numpy(source).permute(2, 0, 1).float().div(255).unsqueeze(0)
    if method.edit == "masked":
        region = edit_region(method.size)
        return source, {"init_image": tensor, "mask": torch.from_numpy(region).float()}, region
    background = np.all(source == source[0, 0], axis=-1)
    extra = {"init_image": tensor, "source_text": prompt_of(source_colour(colour), shape)}
    return source, {**extra, "mask": "auto"} if method.edit == "localised" else extra, ~background


def run_one(method: Method, pipe: Any, colour: str, shape: str, seed: int,
            folder: Path, precision: str = "fp32") -> tuple[Image.Image, dict[str, Any]]:
    """One image of a method (saved with its recipe under `folder`) and its verdict, with the seconds it took and
    for edits the change in and out of the region."""
    extra: dict[str, Any] = {}
    source = region = None
    if method.edit:
        source, extra, region = edit_inputs(method, colour, shape)
    if precision != "fp32":
        extra["precision"] = precision
    started = time.perf_counter()
    output = pipe(prompt_of(colour, shape), seed=seed, progress=False, save_every=0, **method.settings,
                  **extra)
    image = output.images[0]
    save_png(image, folder / f"{colour}-{shape}-{seed}.png", output.recipe)
    verdict = judge(image, colour, shape)
    row = {"colour": colour, "shape": shape, "seed": seed, "seconds": round(time.perf_counter() - started, 2),
           "found_colour": verdict.colour, "found_shape": verdict.shape, "iou": verdict.iou,
           "colour_hit": verdict.colour_hit, "shape_hit": verdict.shape_hit}
    if source is not None:
        inside, outside = region_change(source, image, region)
        row.update(change_inside=round(inside, 2), change_outside=round(outside, 2))
    return image, row


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A method's figures: hit rates in %, seconds per image, and for edits the mean change in and out (0-255)."""
    result = {"images": len(rows), "colour_hit": round(100 * np.mean([r["colour_hit"] for r in rows]), 1),
              "shape_hit": round(100 * np.mean([r["shape_hit"] for r in rows]), 1),
              "seconds_per_image": round(float(np.mean([r["seconds"] for r in rows])), 2)}
    if "change_outside" in rows[0]:
        result.update(change_inside=round(float(np.mean([r["change_inside"] for r in rows])), 2),
                      change_outside=round(float(np.mean([r["change_outside"] for r in rows])), 2))
    return result


def contact_sheet(rows: dict[str, list[Image.Image]], figures: dict[str, dict[str, Any]]) -> Image.Image:
    """One row per method: its label and figures, then its images (upscaled to CELL pixels)."""
    width = LABEL_WIDTH + CELL * max(len(images) for images in rows.values())
    sheet = Image.new("RGB", (width, CELL * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    for index, (name, images) in enumerate(rows.items()):
        top = index * CELL
        figure = figures[name]
        draw.text((4, top + 4), name, fill="black")
        draw.text((4, top + 20), f"colour {figure['colour_hit']:g}%  shape {figure['shape_hit']:g}%", fill="black")
        draw.text((4, top + 36), f"{figure['seconds_per_image']:g} s/image", fill="black")
        for column, image in enumerate(images):
            sheet.paste(image.resize((CELL, CELL), Image.NEAREST), (LABEL_WIDTH + column * CELL, top))
    return sheet


def print_table(figures: dict[str, dict[str, Any]]) -> None:
    """The table: one line per method."""
    print(f"{'method':<22}{'images':>7}{'colour %':>10}{'shape %':>9}{'s/image':>9}{'in/255':>8}{'out/255':>9}")
    for name, f in figures.items():
        edits = f"{f['change_inside']:>8.1f}{f['change_outside']:>9.1f}" if "change_outside" in f else ""
        print(f"{name:<22}{f['images']:>7}{f['colour_hit']:>10.1f}{f['shape_hit']:>9.1f}{f['seconds_per_image']:>9.2f}"
              f"{edits}", flush=True)


def grid(quick: bool, seeds: int, colours: list[str], shapes: list[str]) -> list[tuple[str, str, int]]:
    """The (colour, shape, seed) items to run, prompt-major so that a short run covers the most prompts."""
    prompts = list(QUICK_PROMPTS) if quick else [(c, s) for c in colours for s in shapes]
    return [(c, s, seed) for seed in range(1 if quick else seeds) for c, s in prompts]


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`KEY=VALUE` call settings, each value read as a Python literal when it is one ('0.2', 'True'), else as text."""
    overrides = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"--set takes KEY=VALUE, got {pair!r}")
        try:
            overrides[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            overrides[key] = text
    return overrides


def run(methods: list[str], items: list[tuple[str, str, int]], out: Path, progress: bool = True,
        overrides: dict[str, Any] | None = None, precision: str = "fp32") -> dict[str, Any]:
    """Run the methods over the items (their call settings updated by `overrides`); write the JSON (after each
    method) and the contact sheet; return the report."""
    report: dict[str, Any] = {"machine": machine(), "precision": precision, "settings": {}, "summary": {}, "items": {}}
    sheet_rows: dict[str, list[Image.Image]] = {}
    out.mkdir(parents=True, exist_ok=True)
    first_seed = min(seed for _, _, seed in items)
    for name in methods:
        method = METHODS[name]
        if overrides:
            method = replace(method, settings={**method.settings, **overrides})
        pipe = method.load()
        report["settings"][name] = {**method.settings, **method.recorded, "edit": method.edit,
                                    "size": method.settings.get("size", method.size)}
        rows, images = [], []
        for colour, shape, seed in tqdm(items, desc=name, disable=not progress, dynamic_ncols=True):
            image, row = run_one(method, pipe, colour, shape, seed, out / "images" / name, precision)
            rows.append(row)
            if seed == first_seed:
                images.append(image)
        report["items"][name], sheet_rows[name] = rows, images
        report["summary"][name] = summary(rows)
        (out / "meaning.json").write_text(json.dumps(report, indent=1))
        print_table({name: report["summary"][name]})
    save_png(contact_sheet(sheet_rows, report["summary"]), out / "meaning.png",
             {"benchmark": "bench/meaning.py", "settings": report["settings"], "summary": report["summary"]})
    return report


def main(argv: list[str] | None = None) -> int:
    """CLI: run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--seeds", type=int, default=3, help="seeds per prompt")
    parser.add_argument("--colours", nargs="+", choices=list(COLOURS), default=list(COLOURS))
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--quick", action="store_true", help=f"{len(QUICK_PROMPTS)} prompts, 1 seed")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for meaning.json and meaning.png")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="autocast precision of every method")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override call settings of every method run, e.g. augment=geometric lr=0.2 steps=200")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.exit(2, f"error: --seeds must be at least 1, got {args.seeds}\n")
    try:
        overrides = parse_overrides(args.set)
    except ValueError as error:
        parser.exit(2, f"error: {error}\n")
    torch.set_num_threads(args.threads)
    report = run(args.methods, grid(args.quick, args.seeds, args.colours, args.shapes), args.out,
                 overrides=overrides, precision=args.precision)
    print()
    print_table(report["summary"])
    print(f"wrote {args.out / 'meaning.json'} and {args.out / 'meaning.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
