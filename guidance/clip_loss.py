"""CLIP as a loss module: text and image targets embedded once, cutouts of the images scored against them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from .encoder import CLIPEncoder, check_images
from .cutouts import MakeCutouts
from .errors import InvalidInputError
from .losses import DISTANCES, directional_loss, spherical_dist_loss
from .prompts import Prompt, normalize, parse_prompts
from .templates import Template, choose_templates, fill
from .validation import check_number

CLIPModels = Union[CLIPEncoder, Sequence[CLIPEncoder], Sequence[tuple[CLIPEncoder, float]]]


@dataclass(frozen=True)
class ImagePrompt:
    """An image used as a target like a text: BCHW or CHW tensor in [0, 1], with a weight and a stop."""

    image: torch.Tensor
    weight: float = 1.0
    stop: float = -math.inf
    label: str = "image"


def as_ensemble(clip_models: CLIPModels) -> list[tuple[CLIPEncoder, float]]:
    """Normalise one model, a list of models, or (model, weight) pairs to a list of (model, weight)."""
    if isinstance(clip_models, CLIPEncoder):
        return [(clip_models, 1.0)]
    members = [m if isinstance(m, tuple) else (m, 1.0) for m in clip_models]
    if not members:
        raise InvalidInputError("CLIPLoss needs at least one CLIP model")
    for model, weight in members:
        if not isinstance(model, CLIPEncoder):
            raise InvalidInputError(f"CLIPLoss takes models from load_clip(), got {type(model).__name__}")
        if not math.isfinite(weight):
            raise InvalidInputError(f"CLIP model weight must be finite, got {weight}")
    return [(model, float(weight)) for model, weight in members]


def default_cutouts(members: list[tuple[CLIPEncoder, float]], cutn: int = 32, **kwargs) -> MakeCutouts:
    """Cutouts at the largest input side of the ensemble (smaller models resize inside encode_image)."""
    return MakeCutouts(max(model.image_size for model, _ in members), cutn=cutn, **kwargs)


def stopped(distances: torch.Tensor, weight: float, stop: float) -> torch.Tensor:
    """Distances whose gradient is dropped once the signed distance `sign(weight) * d` falls below `stop`."""
    if stop == -math.inf:
        return distances
    active = distances * math.copysign(1.0, weight) > stop
    return torch.where(active, distances, distances.detach())


class CLIPLoss(nn.Module):
    """Weighted CLIP distance of images to text and image prompts, averaged over cutouts, summed over an ensemble.

    Targets are embedded once at construction. `forward(images)` takes [0, 1] BCHW images and returns a scalar
    (or per-image losses with `reduction='none'`); `last_losses` holds the latest per-prompt values, detached.

    `contrast` w subtracts w times the distance to CLIP's embedding of the empty text: an image then gains only by
    being nearer the prompts than to no text in particular, so a blank or a featureless field, which sits at a
    middling distance from every caption, no longer scores well.
    """

    def __init__(self, clip_models: CLIPModels, prompts: str | Sequence[str | Prompt] = (),
                 image_prompts: Sequence[ImagePrompt | torch.Tensor] = (), cutouts: MakeCutouts | None = None,
                 distance: str = "spherical", normalize_weights: bool = False, contrast: float = 0.0):
        super().__init__()
        self.members = as_ensemble(clip_models)
        self.clip_models = nn.ModuleList(model for model, _ in self.members)
        if distance not in DISTANCES:
            raise InvalidInputError(f"unknown distance {distance!r}; choose one of {', '.join(DISTANCES)}")
        self.distance = DISTANCES[distance]
        text_prompts = self._text_prompts(prompts)
        images = [p if isinstance(p, ImagePrompt) else ImagePrompt(p) for p in image_prompts]
        if not text_prompts and not images:
            raise InvalidInputError("CLIPLoss needs at least one text or image prompt, e.g. 'a red circle'")
        if normalize_weights:
            all_prompts = normalize(text_prompts + [Prompt(p.label, p.weight, p.stop) for p in images])
            text_prompts = all_prompts[:len(text_prompts)]
            images = [ImagePrompt(p.image, q.weight, q.stop, p.label) for p, q in zip(images, all_prompts[len(text_prompts):])]
        self.prompts = [(p.text, p.weight, p.stop) for p in text_prompts] + [(p.label, p.weight, p.stop) for p in images]
        labels = unique_labels([label for label, _, _ in self.prompts])  # one last_losses entry per prompt
        self.prompts = [(label, weight, stop) for label, (_, weight, stop) in zip(labels, self.prompts)]
        self.member_labels = unique_labels([model.name for model, _ in self.members])
        self.cutouts = cutouts if cutouts is not None else default_cutouts(self.members)
        self.contrast = check_number("--contrast", contrast, low=0)
        for index, (model, _) in enumerate(self.members):
            self.register_buffer(f"targets_{index}", self._embed_targets(model, text_prompts, images), persistent=False)
            if self.contrast:
                self.register_buffer(f"neutral_{index}", self._embed_targets(model, [Prompt("")], []), persistent=False)
        self.last_losses: dict[str, torch.Tensor] = {}

    @staticmethod
    def _text_prompts(prompts: str | Sequence[str | Prompt]) -> list[Prompt]:
        """Parse prompt strings; keep Prompt objects as they are."""
        if isinstance(prompts, str):
            return parse_prompts(prompts)
        parsed: list[Prompt] = []
        for prompt in prompts:
            parsed.extend([prompt] if isinstance(prompt, Prompt) else parse_prompts(prompt))
        return parsed

    @torch.no_grad()
    def _embed_targets(self, model: CLIPEncoder, texts: list[Prompt], images: list[ImagePrompt]) -> torch.Tensor:
        """One row per prompt: text embeddings, then image embeddings."""
        rows = []
        if texts:
            rows.append(model.encode_text([p.text for p in texts]))
        for prompt in images:
            image = prompt.image.unsqueeze(0) if prompt.image.ndim == 3 else prompt.image
            check_images(image)
            rows.append(model.encode_image(image).mean(0, keepdim=True))
        return F.normalize(torch.cat(rows), dim=-1)

    def targets(self, index: int) -> torch.Tensor:
        """The embedded targets for ensemble member `index`, one row per prompt."""
        return getattr(self, f"targets_{index}")

    def forward(self, images: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """Loss of [0, 1] BCHW images: scalar for 'mean'/'sum', shape (B,) for 'none'."""
        check_images(images)
        batch = images.shape[0]
        cutouts = self.cutouts(images)
        per_image = images.new_zeros(batch, dtype=torch.float32)
        breakdown: dict[str, torch.Tensor] = {}
        for index, (model, model_weight) in enumerate(self.members):
            embeddings = model.encode_image(cutouts).view(-1, batch, 1, model.embed_dim)  # cutout-major
            distances = self.distance(embeddings, self.targets(index))  # (cutn, B, P)
            for column, (label, weight, stop) in enumerate(self.prompts):
                per_prompt = stopped(distances[..., column], weight, stop).mean(0)  # (B,)
                per_image = per_image + model_weight * weight * per_prompt
                key = label if len(self.members) == 1 else f"{self.member_labels[index]}: {label}"
                breakdown[key] = per_prompt.detach().mean()
            if self.contrast:
                neutral = self.distance(embeddings, getattr(self, f"neutral_{index}"))[..., 0].mean(0)  # (B,)
                per_image = per_image - model_weight * self.contrast * neutral
        self.last_losses = breakdown
        return reduce(per_image, reduction)


def unique_labels(labels: Sequence[str]) -> list[str]:
    """Labels made distinct by numbering repeats: ['image', 'image'] -> ['image', 'image #2']."""
    seen: dict[str, int] = {}
    unique = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        unique.append(label if seen[label] == 1 else f"{label} #{seen[label]}")
    return unique


def reduce(per_image: torch.Tensor, reduction: str) -> torch.Tensor:
    """Apply a loss reduction: 'mean', 'sum' or 'none'."""
    if reduction == "mean":
        return per_image.mean()
    if reduction == "sum":
        return per_image.sum()
    if reduction == "none":
        return per_image
    raise InvalidInputError(f"unknown reduction {reduction!r}; choose 'mean', 'sum' or 'none'")


def template_embedding(model: CLIPEncoder, text: str, templates: Sequence[Template]) -> torch.Tensor:
    """Mean unit embedding of `text` inserted into each template (callables or '{}' format strings)."""
    return F.normalize(model.encode_text([fill(template, text) for template in templates]).mean(0), dim=-1)


class DirectionalCLIPLoss(nn.Module):
    """DiffusionCLIP-style edit loss: the image's change must point along the source-to-target text direction.

    The text direction is averaged over prompt templates: by default ('auto') the CLIP paper's ImageNet set, or
    the Chinese set when a text is Chinese (any name or file `guidance.templates.choose_templates` takes). With `cutouts`, edited and
    source images are cut with the same boxes and augmented alike (`MakeCutouts.pair`: augmenting both keeps an
    edit from fooling CLIP with patterns only it sees); without, whole images are compared. `l1_weight` adds
    `l1(edited, source)` for fidelity; `target_weight` adds the edited images' spherical distance to the target
    text itself (the loss a masked edit descends), for edits confined to a region.
    """

    def __init__(self, clip_models: CLIPModels, source_image: torch.Tensor, source_text: str, target_text: str,
                 cutouts: MakeCutouts | None = None, l1_weight: float = 0.0,
                 templates: str | Sequence[Template] = "auto", target_weight: float = 0.0):
        super().__init__()
        self.members = as_ensemble(clip_models)
        self.clip_models = nn.ModuleList(model for model, _ in self.members)
        source_image = source_image.unsqueeze(0) if source_image.ndim == 3 else source_image
        check_images(source_image)
        for label, text in (("source text", source_text), ("target text", target_text)):
            if not isinstance(text, str) or not text.strip():
                raise InvalidInputError(f"the {label} of a directional edit is empty; e.g. 'cat' -> 'dog'")
        templates = choose_templates([source_text, target_text], templates)
        self.register_buffer("source_image", source_image.detach().clone(), persistent=False)
        self.cutouts, self.l1_weight = cutouts, l1_weight
        self.target_weight = check_number("target_weight", target_weight, low=0)
        self.last_losses: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for index, (model, _) in enumerate(self.members):
                direction = template_embedding(model, target_text, templates) - template_embedding(model, source_text, templates)
                if direction.norm() < 1e-6:
                    raise InvalidInputError(f"source text {source_text!r} and target text {target_text!r} embed the same "
                                            "for CLIP, so there is no edit direction; give two different texts")
                self.register_buffer(f"text_direction_{index}", F.normalize(direction, dim=-1), persistent=False)
                self.register_buffer(f"source_embedding_{index}", model.encode_image(self.source_image), persistent=False)
                if self.target_weight:
                    self.register_buffer(f"target_embedding_{index}", model.encode_text([target_text]), persistent=False)

    def forward(self, images: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """Directional loss (+ L1 to the source) of edited [0, 1] BCHW images, same size as the source."""
        check_images(images)
        if images.shape[-2:] != self.source_image.shape[-2:]:
            raise InvalidInputError(f"edited images are {tuple(images.shape[-2:])}, the source is "
                                    f"{tuple(self.source_image.shape[-2:])}; they must match")
        batch = images.shape[0]
        source = self.source_image.expand(batch, -1, -1, -1)
        if self.cutouts is not None:
            edited_views, source_views = self.cutouts.pair(images, source)
        per_image = images.new_zeros(batch, dtype=torch.float32)
        target_part = images.new_zeros(batch, dtype=torch.float32)
        for index, (model, model_weight) in enumerate(self.members):
            direction = getattr(self, f"text_direction_{index}")
            if self.cutouts is None:
                edited, reference = model.encode_image(images), getattr(self, f"source_embedding_{index}")
            else:
                edited = model.encode_image(edited_views)
                with torch.no_grad():
                    reference = model.encode_image(source_views)
            loss = directional_loss(reference, edited, torch.zeros_like(direction), direction)
            per_image = per_image + model_weight * loss.view(-1, batch).mean(0)
            if self.target_weight:
                to_target = spherical_dist_loss(edited, getattr(self, f"target_embedding_{index}"))
                target_part = target_part + model_weight * to_target.view(-1, batch).mean(0)
        self.last_losses = {"directional": per_image.detach().mean()}
        if self.target_weight:
            self.last_losses["target"] = target_part.detach().mean()
            per_image = per_image + self.target_weight * target_part
        if self.l1_weight:
            l1 = (images - source).abs().mean(dim=(1, 2, 3))
            self.last_losses["l1"] = l1.detach().mean()
            per_image = per_image + self.l1_weight * l1
        return reduce(per_image, reduction)
