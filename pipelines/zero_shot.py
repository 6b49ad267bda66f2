"""CLIP's own jobs on image files: zero-shot classification, text-to-image retrieval, and zero-shot evaluation.

Python:  classify(clip, paths, ["cat", "dog"]) -> probabilities; rank(clip, paths, "a red circle");
         evaluate(clip, "labelled-folder/") -> accuracy per class
CLI:     python -m pipelines.zero_shot IMAGES... --labels "cat,dog" [--templates auto|imagenet|zh|none|FILE] [--csv out.csv]
         python -m pipelines.zero_shot IMAGES... --query "a red circle"
         python -m pipelines.zero_shot --eval FOLDER_OR_CSV [--label-column colour]

Folders are walked for images. Labels are put into prompt templates and ensembled as in the CLIP paper: the
ImageNet set for English, the Chinese set when a label is Chinese ('auto'), or as chosen.
"""

from __future__ import annotations

import csv
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from pipelines.parsers import zero_shot_parser as build_parser

if __name__ == "__main__":  # parse first: --help and usage errors answer before the heavy imports below
    build_parser().parse_args()

import torch
from tqdm.auto import tqdm

from guidance.clip_models import load_clip, parse_clip_spec
from guidance.encoder import CLIPEncoder
from guidance.errors import InvalidInputError
from guidance.images import load_image
from guidance.runtime import pick_device
from guidance.scoring import zero_shot_classify
from guidance.templates import Template, choose_templates
from pipelines.common import run_cli

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
BATCH = 64  # images embedded at once


# --- images -----------------------------------------------------------------------------------------------


def collect_images(paths: Iterable[str | Path]) -> list[Path]:
    """Image files from files and folders (walked, sorted), in the order given; a one-line error if none."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.is_file():
            found.append(path)
        else:
            raise InvalidInputError(f"no such image file or folder: {path}")
    if not found:
        raise InvalidInputError(f"no images found in {', '.join(map(str, paths))}; give image files or folders of them")
    return found


def batches(paths: Sequence[Path], clip: CLIPEncoder, what: str) -> Iterable[torch.Tensor]:
    """The images as [0, 1] batches at the model's input side, with a progress bar when there are many."""
    size = (clip.image_size, clip.image_size)
    for start in tqdm(range(0, len(paths), BATCH), desc=what, unit="batch", disable=len(paths) <= BATCH, leave=False):
        yield torch.cat([load_image(path, size) for path in paths[start:start + BATCH]]).to(clip.device)


@torch.no_grad()
def embed_images(clip: CLIPEncoder, paths: Sequence[Path]) -> torch.Tensor:
    """Unit image embeddings (N, D) of image files."""
    return torch.cat([clip.encode_image(images) for images in batches(paths, clip, "embedding images")])


# --- jobs -------------------------------------------------------------------------------------------------


def classify(clip: CLIPEncoder, paths: Sequence[Path], labels: Sequence[str],
             templates: str | Sequence[Template] = "auto") -> torch.Tensor:
    """Class probabilities (N, L) of image files: softmax over labels (SigLIP: a sigmoid per label)."""
    check_labels(labels)
    templates = choose_templates(labels, templates)
    return torch.cat([zero_shot_classify(clip, images, labels, templates).cpu()
                      for images in batches(paths, clip, "classifying")])


@dataclass(frozen=True)
class Match:
    """One image's place in a text query's ranking."""

    path: Path
    similarity: float  # cosine of the image and text embeddings
    probability: float | None  # SigLIP's sigmoid(scale * cos + bias); None for softmax CLIPs


@torch.no_grad()
def rank(clip: CLIPEncoder, paths: Sequence[Path], query: str) -> list[Match]:
    """Images ranked by cosine similarity to a text query, most similar first."""
    if not isinstance(query, str) or not query.strip():
        raise InvalidInputError("the query is empty; describe what to find, e.g. --query 'a red circle'")
    similarity = (embed_images(clip, paths) @ clip.encode_text([query.strip()]).T).squeeze(1).cpu()
    bias = clip.logit_bias
    probability = (torch.sigmoid(clip.logit_scale * similarity + bias.cpu()) if bias is not None else None)
    order = similarity.argsort(descending=True).tolist()
    return [Match(paths[i], float(similarity[i]), None if probability is None else float(probability[i]))
            for i in order]


@dataclass(frozen=True)
class Evaluation:
    """Zero-shot accuracy on labelled images: overall and per class (top-1 and top-k, k = min(5, classes))."""

    classes: list[str]
    counts: list[int]
    top1: list[float]
    topk: list[float]
    k: int
    overall_top1: float
    overall_topk: float


def evaluate(clip: CLIPEncoder, dataset: str | Path, templates: str | Sequence[Template] = "auto",
             label_column: str = "label", image_column: str = "filepath") -> Evaluation:
    """Zero-shot top-1/top-k accuracy on a folder with one subfolder per class, or a CSV of image paths and labels."""
    paths, truth = read_labelled(Path(dataset), label_column, image_column)
    classes = sorted(set(truth))
    probabilities = classify(clip, paths, classes, templates)
    k = min(5, len(classes))
    target = torch.tensor([classes.index(label) for label in truth])
    hits_topk = (probabilities.topk(k, dim=1).indices == target[:, None]).any(1).float()
    hits_top1 = (probabilities.argmax(1) == target).float()
    counts = [int((target == c).sum()) for c in range(len(classes))]
    return Evaluation(classes, counts,
                      [float(hits_top1[target == c].mean()) for c in range(len(classes))],
                      [float(hits_topk[target == c].mean()) for c in range(len(classes))],
                      k, float(hits_top1.mean()), float(hits_topk.mean()))


def read_labelled(dataset: Path, label_column: str, image_column: str) -> tuple[list[Path], list[str]]:
    """(image paths, labels) of a folder of class subfolders (names with '_' read as spaces) or of a CSV."""
    if dataset.is_dir():
        folders = sorted(p for p in dataset.iterdir() if p.is_dir())
        pairs = [(image, folder.name.replace("_", " ")) for folder in folders
                 for image in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)]
    elif dataset.is_file():
        pairs = read_csv_labels(dataset, label_column, image_column)
    else:
        raise InvalidInputError(f"no such labelled folder or CSV: {dataset}")
    if len({label for _, label in pairs}) < 2:
        raise InvalidInputError(f"{dataset} has images of {len({label for _, label in pairs})} class(es); an evaluation "
                                "needs at least two: one subfolder of images per class, or a CSV with a label column")
    return [path for path, _ in pairs], [label for _, label in pairs]


def read_csv_labels(path: Path, label_column: str, image_column: str) -> list[tuple[Path, str]]:
    """(image path, label) rows of a CSV; relative image paths are relative to the CSV's folder."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise InvalidInputError(f"cannot read CSV {path} ({type(error).__name__}); give a UTF-8 CSV with a header") from None
    columns = list(rows[0]) if rows else []
    for column, option in ((image_column, "--image-column"), (label_column, "--label-column")):
        if column not in columns:
            raise InvalidInputError(f"{path} has no column {column!r} (columns: {', '.join(columns) or 'none'}); "
                                    f"name the right one with {option}")
    return [(path.parent / row[image_column], row[label_column].strip()) for row in rows]


def check_labels(labels: Sequence[str]) -> None:
    """Refuse fewer than two labels, empty labels and repeated labels in one line."""
    if len(labels) < 2 or any(not label for label in labels):
        raise InvalidInputError("give at least two non-empty labels, e.g. --labels 'cat,dog'")
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise InvalidInputError(f"label(s) given twice: {', '.join(repeated)}; list each class once")


# --- command line -----------------------------------------------------------------------------------------


def read_labels(text: str | None, file: str | None) -> list[str]:
    """Labels from a comma-separated option and/or a file with one label per line."""
    labels = [label.strip() for label in (text or "").split(",") if label.strip()]
    if file:
        try:
            lines = Path(file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise InvalidInputError(f"cannot read labels file {file} ({type(error).__name__}); give a UTF-8 text file "
                                    "with one label per line") from None
        labels += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    return labels


def load_judge(spec: str, device: str | None) -> CLIPEncoder:
    """One CLIP model from a `NAME[:PRETRAINED]` spec (a weight is meaningless for one model and is refused)."""
    name, pretrained, weight = parse_clip_spec(spec)
    if weight != 1.0:
        raise InvalidInputError(f"--clip-model {spec!r}: a weight is for ensembles of generators; give NAME[:PRETRAINED]")
    return load_clip(name, pretrained, pick_device(device))


def write_rows(header: Sequence[str], rows: Sequence[Sequence[object]], csv_path: str | None) -> None:
    """Print rows as an aligned table on stdout, and write them to a CSV file when asked."""
    cells = [list(map(str, header))] + [[format_cell(cell) for cell in row] for row in rows]
    widths = [max(display_width(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        print("  ".join(cell + " " * (width - display_width(cell)) for cell, width in zip(row, widths)).rstrip())
    if csv_path:
        with open(csv_path, "w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows([header, *[[format_cell(cell) for cell in row] for row in rows]])
        print(f"wrote {csv_path}", file=sys.stderr)


def display_width(text: str) -> int:
    """Terminal columns a text takes: wide (e.g. Chinese) characters take two."""
    return sum(2 if unicodedata.east_asian_width(char) in "WF" else 1 for char in text)


def format_cell(cell: object) -> str:
    """Floats with 4 decimals, everything else as text."""
    return f"{cell:.4f}" if isinstance(cell, float) else str(cell)


def main(argv: list[str]) -> int:
    """Run the CLI; returns the exit code."""
    args = build_parser().parse_args(argv)
    if args.eval is None and not args.images:
        raise InvalidInputError("give image files or folders to classify or search (or --eval FOLDER_OR_CSV)")
    if args.eval is not None and args.images:
        raise InvalidInputError("--eval reads its images from the labelled folder or CSV; drop the image arguments")
    clip = load_judge(args.clip_model, args.device)
    if args.eval is not None:
        result = evaluate(clip, args.eval, args.templates, args.label_column, args.image_column)
        rows = [[name, count, top1, topk] for name, count, top1, topk in
                zip(result.classes, result.counts, result.top1, result.topk)]
        rows.append(["(all)", sum(result.counts), result.overall_top1, result.overall_topk])
        write_rows(["class", "images", "top1", f"top{result.k}"], rows, args.csv)
        return 0
    paths = collect_images(args.images)
    if args.query is not None:
        matches = rank(clip, paths, args.query)
        siglip = matches[0].probability is not None
        header = ["rank", "similarity", *(["probability"] if siglip else []), "image"]
        rows = [[index, m.similarity, *([m.probability] if siglip else []), m.path]
                for index, m in enumerate(matches, 1)]
        write_rows(header, rows, args.csv)
        return 0
    labels = read_labels(args.labels, args.labels_file)
    probabilities = classify(clip, paths, labels, args.templates)
    rows = [[path, *map(float, row), labels[int(row.argmax())]] for path, row in zip(paths, probabilities)]
    write_rows(["image", *labels, "best"], rows, args.csv)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
