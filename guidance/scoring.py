"""Evaluation with CLIP: CLIP score and zero-shot classification with prompt ensembling."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .clip_loss import template_embedding
from .encoder import CLIPEncoder
from .errors import InvalidInputError
from .templates import Template, choose_templates


@torch.no_grad()
def clip_score(model: CLIPEncoder, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
    """CLIP score per (image, text) pair: `max(100 * cos(E_I, E_T), 0)`, shape (B,)."""
    if isinstance(texts, str):
        texts = [texts]
    if len(texts) not in (1, images.shape[0]):
        raise InvalidInputError(f"clip_score got {images.shape[0]} images and {len(texts)} texts; give one text or one per image")
    cosine = (model.encode_image(images) * model.encode_text(list(texts))).sum(-1)
    return (100 * cosine).clamp(min=0)


@torch.no_grad()
def zero_shot_classify(model: CLIPEncoder, images: torch.Tensor, labels: Sequence[str],
                       templates: str | Sequence[Template] = "auto") -> torch.Tensor:
    """Class probabilities (B, L): each label's embedding is the mean over templates, logits scaled as trained.

    Templates: 'auto' (the CLIP paper's ImageNet set, or the Chinese set when a label is Chinese), a set's name
    ('imagenet', 'zh', 'none'), a file of templates, or a sequence of '{}' strings or callables.
    Softmax CLIPs give a distribution over the labels; sigmoid models (SigLIP, with a `logit_bias`) give each
    label its own probability `sigmoid(logit_scale * cos + logit_bias)`, as they were trained.
    """
    if isinstance(labels, str) or len(labels) < 2:
        raise InvalidInputError("zero_shot_classify needs a list of at least two labels")
    templates = choose_templates(labels, templates)
    classes = torch.stack([template_embedding(model, label, templates) for label in labels])
    logits = model.logit_scale * model.encode_image(images) @ classes.T
    if model.logit_bias is not None:
        return torch.sigmoid(logits + model.logit_bias)
    return F.softmax(logits, dim=-1)
