"""Keeping the best of a batch (`--keep-best K`): the images ranked by CLIP score against the prompt, by a judge the
user chooses (`--judge-model`) or, with a notice that this is optimistic, by the guiding models."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from guidance.clip_models import CLIPEncoder
from guidance.errors import InvalidInputError
from guidance.prompts import parse_prompts
from guidance.validation import check_count
from pipelines.clip_score import score_image
from pipelines.zero_shot import load_judge


@dataclass(frozen=True)
class Ranking:
    """The CLIP judges that rank a batch for `keep_best`, and the name its recipes give them."""

    judges: list[CLIPEncoder]
    label: str
    keep: int

    def scores(self, images: torch.Tensor, prompt: str) -> list[float]:
        """Each image's CLIP score against the prompt (`pipelines.clip_score.score_image`), averaged over the judges."""
        return [sum(score_image(judge, images[k:k + 1].to(judge.device), prompt) for judge in self.judges)
                / len(self.judges) for k in range(images.shape[0])]

    def best(self, images: torch.Tensor, prompt: str, own: list[dict[str, Any]]) -> list[int]:
        """The indices of the `keep` best images, best first; each one's `own` recipe entries get its rank, score
        and judge."""
        scores = self.scores(images, prompt)
        order = sorted(range(len(scores)), key=lambda k: -scores[k])[:self.keep]
        for rank, k in enumerate(order, 1):
            own[k].update(rank=rank, clip_score=round(scores[k], 4), judge=self.label)
        return order


def ranking_for(prompt: str, num_images: int, keep_best: int | None, judge_model: str | None,
                guides: Sequence[CLIPEncoder], device: torch.device) -> Ranking | None:
    """The ranking `keep_best` asks for, its judge loaded (call it before any work); None without keep_best."""
    if keep_best is None:
        if judge_model is not None:
            raise InvalidInputError("--judge-model ranks the images of --keep-best; add --keep-best K")
        return None
    check_count("--keep-best", keep_best, 1, num_images)
    if not (prompt and prompt.strip()) or not any(p.weight > 0 for p in parse_prompts(prompt)):
        raise InvalidInputError("--keep-best ranks by CLIP score against the text prompt; give a text prompt "
                                "with a positive part")
    if judge_model is None:
        warnings.warn("--keep-best ranks by the guiding CLIP models, which the images were optimised for: the "
                      "ranking is optimistic; give --judge-model another CLIP for a fairer one", stacklevel=3)
        return Ranking(list(guides), "guiding models", keep_best)
    judge = load_judge(judge_model, str(device))
    if judge.name in {model.name for model in guides}:
        warnings.warn(f"--judge-model {judge_model} also guides the images: the ranking is optimistic", stacklevel=3)
    return Ranking([judge], judge_model, keep_best)
