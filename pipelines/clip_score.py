"""CLIP score of images against their prompts: `max(100 * cos(image, text), 0)` by a judge CLIP model.

Python:  score_images(judge, paths) -> [Score(path, prompt, score, guided_by_judge)]
CLI:     python -m pipelines.clip_score IMAGES... [--prompt TEXT] [--clip-model JUDGE] [--csv scores.csv]

Without --prompt each PNG is scored against the prompt in its recipe (its positive parts, averaged with their
weights). A judge that guided the image (it is in the recipe's clip_models) rates it too kindly: a warning says so.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from pipelines.parsers import clip_score_parser as build_parser

if __name__ == "__main__":  # parse first: --help and usage errors answer before the heavy imports below
    build_parser().parse_args()

import torch

from guidance.clip_models import parse_clip_spec
from guidance.encoder import CLIPEncoder
from guidance.errors import InvalidInputError
from guidance.images import load_image, read_recipe
from guidance.prompts import Prompt, parse_prompts
from guidance.scoring import clip_score
from pipelines.common import run_cli
from pipelines.zero_shot import collect_images, load_judge, write_rows


@dataclass(frozen=True)
class Score:
    """One image's CLIP score against its prompt."""

    path: Path
    prompt: str
    score: float
    guided_by_judge: bool  # the judge is one of the models that guided the image


def recipe_prompt(path: Path) -> tuple[str, list[str]]:
    """The prompt and the CLIP models (names) stored in a PNG's recipe."""
    recipe = read_recipe(path)
    prompt = recipe.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidInputError(f"the recipe of {path} holds no prompt; give one with --prompt")
    return prompt, [model_name(spec) for spec in recipe.get("clip_models", [])]


def model_name(spec: str) -> str:
    """A recipe's `NAME[:PRETRAINED]:WEIGHT` entry as the model's name, `NAME[:PRETRAINED]`."""
    name, pretrained, _ = parse_clip_spec(spec)
    return f"{name}:{pretrained}" if pretrained else name


def positive_parts(prompt: str) -> list[Prompt]:
    """The parts of a weighted prompt that pull (weight > 0); one-line error when none does."""
    parts = [part for part in parse_prompts(prompt) if part.weight > 0]
    if not parts:
        raise InvalidInputError(f"prompt {prompt!r} has no positive part to score against; give one with --prompt")
    return parts


@torch.no_grad()
def score_image(judge: CLIPEncoder, image: torch.Tensor, prompt: str) -> float:
    """CLIP score of one image against a prompt: its positive parts' scores averaged with their weights."""
    parts = positive_parts(prompt)
    scores = clip_score(judge, image.expand(len(parts), -1, -1, -1), [part.text for part in parts])
    weights = torch.tensor([part.weight for part in parts])
    return float((scores.cpu() * weights).sum() / weights.sum())


def score_images(judge: CLIPEncoder, paths: Sequence[Path], prompt: str | None = None) -> list[Score]:
    """CLIP score of each image against `prompt`, or against the prompt in its recipe, warning when the judge
    guided the image."""
    scores = []
    for path in paths:
        text, guides = (prompt, []) if prompt is not None else recipe_prompt(path)
        guided = judge.name in guides
        if guided:
            warnings.warn(f"{path} was guided by {judge.name}, the judge: its score is biased upward; judge it with "
                          "another CLIP model (--clip-model)", stacklevel=2)
        image = load_image(path).to(judge.device)
        scores.append(Score(path, text, score_image(judge, image, text), guided))
    return scores


def main(argv: list[str]) -> int:
    """Run the CLI; returns the exit code."""
    args = build_parser().parse_args(argv)
    paths = collect_images(args.images)
    judge = load_judge(args.clip_model, args.device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scores = score_images(judge, paths, args.prompt)
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    write_rows(["image", "clip_score", "guided_by_judge", "prompt"],
               [[s.path, s.score, "yes" if s.guided_by_judge else "no", s.prompt] for s in scores], args.csv)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
