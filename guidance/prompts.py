"""Weighted prompts: `text:weight:stop`, several joined by `|`."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterable

from .errors import InvalidInputError

_NUM = r"\s*[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?\s*"
# `text:weight:stop` or `text:weight`; the text must not end in a digit, so `10:30` and `16:9` stay text.
_WITH_STOP = re.compile(rf"^(?P<text>.*?):(?P<weight>{_NUM}):(?P<stop>{_NUM})$", re.DOTALL)
_WITH_WEIGHT = re.compile(rf"^(?P<text>.*?):(?P<weight>{_NUM})$", re.DOTALL)
# A last field that starts like a number must be one.
_NUMBER_LIKE = re.compile(r"^\s*[-+]?(\d|\.\d)")


@dataclass(frozen=True)
class Prompt:
    """A text or image target with a weight (negative pushes away) and a stop distance."""

    text: str
    weight: float = 1.0
    stop: float = -math.inf


def parse_prompt(text: str) -> Prompt:
    """Parse `text`, `text:weight` or `text:weight:stop`; only trailing numeric fields are parsed.

    A colon right after a digit belongs to the text (times and ratios such as `10:30` or `16:9`);
    to weight such a text, put a space before the weight: `a clock at 10:30 :2`.
    """
    if not isinstance(text, str):
        raise InvalidInputError(f"a prompt must be a string, got {type(text).__name__}")
    for pattern in (_WITH_STOP, _WITH_WEIGHT):
        match = pattern.match(text)
        if match and not match["text"][-1:].isdigit():
            return _checked(match["text"], float(match["weight"]),
                            float(match["stop"]) if "stop" in match.groupdict() else -math.inf, text)
    head, sep, last = text.rpartition(":")
    if sep and head.strip() and not head[-1].isdigit():
        if not last.strip():
            raise InvalidInputError(f"empty weight after ':' in prompt {text!r}; write e.g. 'a red circle:1.5' or drop the ':'")
        if _NUMBER_LIKE.match(last):
            raise InvalidInputError(f"malformed number {last.strip()!r} in prompt {text!r}; weights look like 1, -0.5 or 2e-1")
    return _checked(text, 1.0, -math.inf, text)


def _checked(text: str, weight: float, stop: float, source: str) -> Prompt:
    """A Prompt with stripped, non-empty text."""
    text = text.strip()
    if not text:
        raise InvalidInputError(f"empty prompt text in {source!r}; give a description such as 'a red circle'")
    if text.endswith(":"):
        raise InvalidInputError(f"empty field before the weight in prompt {source!r}; use 'text:weight:stop'")
    if not math.isfinite(weight):
        raise InvalidInputError(f"weight {weight} in prompt {source!r} is not a finite number; use e.g. 1, 2 or -0.5")
    if math.isnan(stop) or stop == math.inf:
        raise InvalidInputError(f"stop {stop} in prompt {source!r} is not a finite number; use e.g. 0.5, or drop it")
    return Prompt(text, weight, stop)


def parse_prompts(text: str | Iterable[str], normalize_weights: bool = False) -> list[Prompt]:
    """Parse `|`-separated prompts (or a list of prompt strings); optionally divide weights by |sum|."""
    items = text.split("|") if isinstance(text, str) else [part for item in text for part in item.split("|")]
    if not items or all(not item.strip() for item in items):
        raise InvalidInputError("the prompt is empty; give a description such as 'a red circle'")
    for position, item in enumerate(items, 1):
        if not item.strip():
            raise InvalidInputError(f"prompt {position} of {len(items)} in {text!r} is empty; remove the extra '|'")
    prompts = [parse_prompt(item) for item in items]
    return normalize(prompts) if normalize_weights else prompts


def normalize(prompts: list[Prompt]) -> list[Prompt]:
    """Divide all weights by |sum of weights|; refuse weights that sum to (nearly) zero."""
    total = sum(p.weight for p in prompts)
    if abs(total) < 1e-6:
        raise InvalidInputError(f"prompt weights sum to zero ({', '.join(f'{p.text}:{p.weight:g}' for p in prompts)}); "
                                "make at least one positive weight larger")
    return [Prompt(p.text, p.weight / abs(total), p.stop) for p in prompts]
