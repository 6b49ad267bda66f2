"""The open_clip backend: architectures with pretrained tags, `hf-hub:` repos, config dicts and local weights files."""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

import open_clip
import torch
from torch import nn

from ..checkpoints import load_state_dict, save_state_dict
from ..encoder import CLIPEncoder, check_texts
from ..errors import InvalidInputError, ModelUnavailableError, first_line
from ..network import HUB_HOST, host_reachable, hub_offline
from . import ClipRequest, is_checkpoint_file
from .fast_vit import speed_up_image_tower


class OpenCLIPEncoder(CLIPEncoder):
    """An open_clip model as a CLIPEncoder; `.model` is the open_clip model (trainable), `.tokenizer` its tokenizer,
    `.config` its open_clip config (None when unknown, e.g. for `hf-hub:` models, which then cannot be saved)."""

    def __init__(self, model: nn.Module, tokenizer: Any, name: str, config: dict | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
        mean = mean or getattr(model.visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN
        std = std or getattr(model.visual, "image_std", None) or open_clip.OPENAI_DATASET_STD
        size = model.visual.image_size
        super().__init__(name, int(size[0] if isinstance(size, (tuple, list)) else size), _embed_dim(model), mean, std,
                         int(getattr(model, "context_length", 77)))
        self.model = model.float().eval().requires_grad_(False)
        sequence_first(getattr(model.visual, "transformer", None))
        speed_up_image_tower(model.visual)
        self.tokenizer = tokenizer
        self.config = config

    @property
    def logit_scale(self) -> torch.Tensor | float:
        """The model's trained temperature, exponentiated (100 if it has none)."""
        return self.model.logit_scale.exp().float() if hasattr(self.model, "logit_scale") else 100.0

    @property
    def logit_bias(self) -> torch.Tensor | None:
        """The logit bias of open_clip's SigLIP models; None for CLIP models."""
        return getattr(self.model, "logit_bias", None)

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """open_clip's image embeddings of preprocessed pixels."""
        return self.model.encode_image(pixels)

    def text_features(self, texts: list[str]) -> torch.Tensor:
        """open_clip's text embeddings of the tokenized texts."""
        return self.model.encode_text(self.tokenize(texts))

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Token ids for texts, warning when a text is longer than the context and gets truncated."""
        check_texts(texts)
        encode = getattr(self.tokenizer, "encode", None)
        if encode is not None:
            for text in texts:
                n_tokens = len(encode(text)) + 2  # start and end tokens
                if n_tokens > self.context_length:
                    warnings.warn(f"text truncated to {self.context_length} tokens ({n_tokens} given): {text[:60]!r}...",
                                  stacklevel=4)  # the caller of encode_text
        return self.tokenizer(list(texts)).to(self.device)

    def save(self, path: str | Path) -> Path:
        """Save as safetensors with the open_clip config and mean/std as metadata, loadable by `load_clip(path)`."""
        if self.config is None:
            raise InvalidInputError(f"cannot save CLIP model '{self.name}': its open_clip config is unknown")
        metadata = {
            "open_clip_config": json.dumps(self.config),
            "image_mean": json.dumps(self.mean.flatten().tolist()),
            "image_std": json.dumps(self.std.flatten().tolist()),
            "name": self.name,
        }
        save_state_dict(self.model.state_dict(), path, metadata)
        return Path(path)


def sequence_first(transformer: nn.Module | None) -> None:
    """Run an open_clip Transformer's nn.MultiheadAttention blocks on contiguous (L, N, D) activations (same maths).

    Batch-first blocks hand `nn.MultiheadAttention` a transposed view, whose input projection then becomes a
    batched matmul against the weight expanded once per token position: under CPU bf16 autocast that expanded
    weight is copied (50 x 768 x 2304 per layer for ViT-B/32). Measured on this CPU (32 cutouts, forward and
    backward of the image tower): fp32 24.2 -> 21.2 s, bf16 autocast 22.1 -> 14.6 s (load average 10)."""
    blocks = getattr(transformer, "resblocks", ())
    attentions = [getattr(block, "attn", None) for block in blocks]
    if not blocks or not all(isinstance(attn, nn.MultiheadAttention) for attn in attentions):
        return  # custom attention blocks take batch-first input and project it contiguously already
    transformer.batch_first = False
    for attn in attentions:
        attn.batch_first = False


def _embed_dim(model: nn.Module) -> int:
    """Width of the joint embedding space: the image tower's output (timm towers do not record it: the text's)."""
    for tower in (model.visual, getattr(model, "text", None)):
        if getattr(tower, "output_dim", None):
            return int(tower.output_dim)
    projection = model.text_projection
    return int(projection.out_features if isinstance(projection, nn.Linear) else projection.shape[-1])


# --- loaders, one per kind of name (rows of guidance.clip_models.CLIP_SOURCES) ---------------------------


def known_names() -> list[str]:
    """The open_clip architecture names."""
    return open_clip.list_models()


def is_named(name: str, pretrained: str | None, architecture: str | dict | None) -> bool:
    """Whether `name` is an open_clip architecture, or `pretrained` a local weights file for one."""
    return is_checkpoint_file(pretrained) or name in open_clip.list_models()


def load_named(request: ClipRequest) -> OpenCLIPEncoder:
    """An open_clip architecture with a pretrained tag (downloaded or cached), a local weights file, or random weights."""
    name, pretrained = request.name, request.pretrained
    label = name if pretrained is None else f"{name}:{pretrained}"
    if is_checkpoint_file(pretrained):
        return load_checkpoint(Path(pretrained), request.architecture or name, label, request.allow_pickle)
    check_architecture(name, pretrained)
    model, tokenizer = _create(name, pretrained, request.cache_dir, label)
    return OpenCLIPEncoder(model, tokenizer, label, open_clip.get_model_config(name))


def load_hub(request: ClipRequest) -> OpenCLIPEncoder:
    """An open_clip model from an `hf-hub:owner/repo` repository (its weights and config come from the repo)."""
    model, tokenizer = _create(request.name, None, request.cache_dir, request.name)
    return OpenCLIPEncoder(model, tokenizer, request.name)


def load_config(request: ClipRequest) -> OpenCLIPEncoder:
    """A new open_clip model with random weights built from the config dict given as `architecture`."""
    model, tokenizer = _create(_register_config(request.architecture), None, None, request.name)
    return OpenCLIPEncoder(model, tokenizer, request.name, request.architecture)


def load_file(request: ClipRequest) -> OpenCLIPEncoder:
    """An open_clip model from the local weights file named by `request.name`."""
    return load_checkpoint(Path(request.name), request.architecture, request.name, request.allow_pickle)


def load_checkpoint(path: Path, architecture: str | dict | None, label: str, allow_pickle: bool) -> OpenCLIPEncoder:
    """Build the architecture (from the file's metadata or `architecture`) and load the file's weights."""
    state_dict, metadata = load_state_dict(path, allow_pickle=allow_pickle)
    if "open_clip_config" in metadata:
        config = json.loads(metadata["open_clip_config"])
    elif isinstance(architecture, dict):
        config = architecture
    elif isinstance(architecture, str):
        check_architecture(architecture, None)
        config = open_clip.get_model_config(architecture)
    else:
        raise InvalidInputError(f"{path} holds no model config; name its architecture, "
                                f"e.g. load_clip('ViT-B-32', pretrained='{path}')")
    arch_name = architecture if isinstance(architecture, str) else _register_config(config)
    model, tokenizer = _create(arch_name, None, None, label)
    model = model.float()
    state_dict = {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}
    try:
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as error:  # tensors whose shapes differ from the architecture's
        mismatch = next((line.strip() for line in str(error).splitlines() if "size mismatch" in line), first_line(error))
        raise InvalidInputError(f"{path} does not match architecture {architecture or 'from its metadata'}: "
                                f"{mismatch[:200]}") from None
    missing = [k for k in missing if not k.endswith("attn_mask")]
    if missing or unexpected:
        raise InvalidInputError(
            f"{path} does not match architecture {architecture or 'from its metadata'}: "
            f"{len(missing)} missing keys (e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})")
    mean = json.loads(metadata["image_mean"]) if "image_mean" in metadata else None
    std = json.loads(metadata["image_std"]) if "image_std" in metadata else None
    return OpenCLIPEncoder(model, tokenizer, label, config, mean, std)


# --- helpers -------------------------------------------------------------------------------------------


def unknown_architecture(name: str, known: Iterable[str]) -> InvalidInputError:
    """The one-line error for an unknown model name, suggesting the closest of the `known` names."""
    close = difflib.get_close_matches(name, list(known), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see open_clip.list_models()"
    return InvalidInputError(f"unknown CLIP architecture '{name}'{hint}")


def check_architecture(name: str, pretrained: str | None) -> None:
    """Raise a one-line error for an unknown architecture or pretrained tag."""
    if name not in open_clip.list_models():
        raise unknown_architecture(name, open_clip.list_models())
    if pretrained is not None:
        tags = open_clip.list_pretrained_tags_by_model(name)
        if pretrained not in tags:
            raise InvalidInputError(f"unknown pretrained tag '{pretrained}' for {name}; known tags: {', '.join(tags) or 'none'}"
                                    "; or pass a local weights file")


def _create(name: str, pretrained: str | None, cache_dir: str | None, label: str) -> tuple[nn.Module, Any]:
    """Build an open_clip model and tokenizer; cached weights load offline, missing ones fail in one line."""
    needs_download = pretrained is not None or name.startswith("hf-hub:")
    offline = needs_download and not host_reachable(HUB_HOST)
    root_logger = logging.getLogger()
    level = root_logger.level
    root_logger.setLevel(logging.CRITICAL)  # open_clip logs warnings and errors we report ourselves
    try:
        with hub_offline() if offline else contextlib.nullcontext():
            # No pretrained tag: random weights, or a checkpoint loaded over them next, so a Hugging Face text
            # tower (the multilingual models) is built from its config and its hub weights are never fetched.
            model = open_clip.create_model(name, pretrained=pretrained, cache_dir=cache_dir,
                                           pretrained_text=pretrained is not None)
            tokenizer = open_clip.get_tokenizer(name, cache_dir=cache_dir)
    except (OSError, RuntimeError, ValueError) as error:
        if not needs_download:
            raise
        reason = "offline and not in the cache" if offline else f"download failed: {first_line(error)}"
        arch = "ARCH" if name.startswith("hf-hub:") else name
        raise ModelUnavailableError(
            f"CLIP weights {label} are unavailable ({reason}); pass a local file instead, "
            f"e.g. load_clip('{arch}', pretrained='path/to/weights.pt') or --clip-model {arch}:path/to/weights.pt"
        ) from None
    finally:
        root_logger.setLevel(level)
    return model, tokenizer


def _register_config(config: dict) -> str:
    """Register an open_clip config dict under a stable name derived from its content and return that name."""
    text = json.dumps(config, sort_keys=True)
    name = f"custom-{hashlib.sha256(text.encode()).hexdigest()[:12]}"
    if open_clip.get_model_config(name) is None:
        folder = Path(tempfile.mkdtemp(prefix="clip-config-"))
        (folder / f"{name}.json").write_text(text)
        open_clip.add_model_config(folder)
    return name
