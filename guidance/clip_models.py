"""Loading CLIP models from any source, wrapped as differentiable image and text encoders."""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any, Sequence

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from .checkpoints import load_state_dict, save_state_dict
from .errors import InvalidInputError, ModelUnavailableError
from .network import HUB_HOST, host_reachable, hub_offline
from .prompts import parse_prompt

WEIGHTS_DIR = Path(__file__).parent / "weights"

# Models that ship inside the package: name -> safetensors file holding weights and config.
BUILTIN_CLIP_MODELS: dict[str, Path] = {
    "shapes-tiny": WEIGHTS_DIR / "shapes-tiny-clip.safetensors",
}

CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")


class CLIPEncoder(nn.Module):
    """A frozen CLIP model that embeds [0, 1] images of any size and lists of texts as unit vectors."""

    def __init__(self, model: nn.Module, tokenizer: Any, name: str, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.name = name
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        size = model.visual.image_size
        self.image_size: int = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.context_length: int = int(getattr(model, "context_length", 77))

    @property
    def device(self) -> torch.device:
        """The device the weights live on."""
        return self.mean.device

    @property
    def embed_dim(self) -> int:
        """Width of the joint embedding space."""
        return int(self.model.visual.output_dim)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Resize [0, 1] BCHW images to the model's input side and apply its mean/std, differentiably."""
        check_images(images)
        if images.shape[-2:] != (self.image_size, self.image_size):
            shrinking = min(images.shape[-2:]) > self.image_size
            images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear",
                                   align_corners=False, antialias=shrinking)
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm embeddings of [0, 1] BCHW images (any size, differentiable w.r.t. the images)."""
        check_images(images)  # before .to(), so a non-tensor gets the one-line error
        pixels = self.preprocess(images.to(self.device))
        return F.normalize(self.model.encode_image(pixels).float(), dim=-1)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Token ids for texts, warning when a text is longer than the context and gets truncated."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts) or len(texts) == 0:
            raise InvalidInputError("encode_text expects a non-empty list of strings, e.g. ['a red circle']")
        encode = getattr(self.tokenizer, "encode", None)
        if encode is not None:
            for text in texts:
                n_tokens = len(encode(text)) + 2  # start and end tokens
                if n_tokens > self.context_length:
                    warnings.warn(f"text truncated to {self.context_length} tokens ({n_tokens} given): {text[:60]!r}...",
                                  stacklevel=3)
        return self.tokenizer(list(texts)).to(self.device)

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-norm embeddings of a list of strings."""
        return F.normalize(self.model.encode_text(self.tokenize(texts)).float(), dim=-1)


def check_images(images: torch.Tensor) -> None:
    """Raise a one-line InvalidInputError unless images is a float BCHW tensor with 3 channels."""
    if not isinstance(images, torch.Tensor):
        raise InvalidInputError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise InvalidInputError(f"images must be BCHW with 3 channels, got shape {tuple(images.shape)}; "
                                "use images.unsqueeze(0) for a single CHW image")
    if not images.is_floating_point():
        raise InvalidInputError(f"images must be float in [0, 1], got {images.dtype}; divide uint8 images by 255")


def load_clip(name: str, pretrained: str | None = None, device: str | torch.device | None = None, *,
              architecture: str | dict | None = None, cache_dir: str | None = None,
              allow_pickle: bool = False) -> CLIPEncoder:
    """Load a CLIP model: an open_clip architecture (+ pretrained tag or local file), an `hf-hub:` repo,
    a built-in name such as `shapes-tiny`, or a local checkpoint file (with `architecture` if it holds no config).

    `pretrained=None` with an architecture name, or an `architecture` config dict with a plain name, gives
    random weights and downloads nothing.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    name = str(name) if isinstance(name, Path) else name  # a checkpoint path given as a Path
    pretrained = str(pretrained) if isinstance(pretrained, Path) else pretrained
    if not isinstance(name, str) or not name.strip():
        raise InvalidInputError("CLIP model name is empty; give an open_clip architecture such as 'ViT-B-32'")
    name = name.strip()
    if name in BUILTIN_CLIP_MODELS:
        path = BUILTIN_CLIP_MODELS[name]
        if not path.is_file():
            raise ModelUnavailableError(f"built-in CLIP model '{name}' is missing its file {path}; reinstall the package")
        encoder = _load_clip_file(path, architecture, name, allow_pickle)
    elif name.endswith(CHECKPOINT_SUFFIXES) or Path(name).is_file():
        encoder = _load_clip_file(Path(name), architecture, name, allow_pickle)
    elif isinstance(architecture, dict):
        model, tokenizer = _create_open_clip(_register_config(architecture), None, None, name)
        encoder = _wrap(model, tokenizer, name, architecture)
    elif name.startswith("hf-hub:"):
        model, tokenizer = _create_open_clip(name, None, cache_dir, name)
        encoder = _wrap(model, tokenizer, name)
    else:
        if isinstance(pretrained, str) and (pretrained.endswith(CHECKPOINT_SUFFIXES) or Path(pretrained).is_file()):
            encoder = _load_clip_file(Path(pretrained), architecture or name, f"{name}:{pretrained}", allow_pickle)
        else:
            _check_architecture(name, pretrained)
            model, tokenizer = _create_open_clip(name, pretrained, cache_dir, f"{name}:{pretrained}")
            encoder = _wrap(model, tokenizer, name if pretrained is None else f"{name}:{pretrained}")
    return encoder.to(device)


def save_clip(clip: CLIPEncoder, path: str | Path) -> Path:
    """Save a CLIP model as safetensors with its open_clip config and mean/std, loadable by `load_clip(path)`."""
    config = getattr(clip, "config", None)
    if config is None:
        raise InvalidInputError(f"cannot save CLIP model '{clip.name}': its open_clip config is unknown")
    metadata = {
        "open_clip_config": json.dumps(config),
        "image_mean": json.dumps(clip.mean.flatten().tolist()),
        "image_std": json.dumps(clip.std.flatten().tolist()),
        "name": clip.name,
    }
    save_state_dict(clip.model.state_dict(), path, metadata)
    return Path(path)


def _check_architecture(name: str, pretrained: str | None) -> None:
    """Raise a one-line error for an unknown architecture or pretrained tag."""
    known = open_clip.list_models()
    if name not in known:
        close = difflib.get_close_matches(name, known + list(BUILTIN_CLIP_MODELS), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see open_clip.list_models()"
        raise InvalidInputError(f"unknown CLIP architecture '{name}'{hint}")
    if pretrained is not None:
        tags = open_clip.list_pretrained_tags_by_model(name)
        if pretrained not in tags:
            raise InvalidInputError(f"unknown pretrained tag '{pretrained}' for {name}; known tags: {', '.join(tags) or 'none'}"
                                    "; or pass a local weights file")


def _create_open_clip(name: str, pretrained: str | None, cache_dir: str | None, label: str) -> tuple[nn.Module, Any]:
    """Build an open_clip model and tokenizer; cached weights load offline, missing ones fail in one line."""
    needs_download = pretrained is not None or name.startswith("hf-hub:")
    offline = needs_download and not host_reachable(HUB_HOST)
    root_logger = logging.getLogger()
    level = root_logger.level
    root_logger.setLevel(logging.CRITICAL)  # open_clip logs warnings and errors we report ourselves
    try:
        with hub_offline() if offline else contextlib.nullcontext():
            model = open_clip.create_model(name, pretrained=pretrained, cache_dir=cache_dir)
            tokenizer = open_clip.get_tokenizer(name, cache_dir=cache_dir)
    except (OSError, RuntimeError, ValueError) as error:
        if not needs_download:
            raise
        reason = "offline and not in the cache" if offline else f"download failed: {_first_line(error)}"
        arch = "ARCH" if name.startswith("hf-hub:") else name
        raise ModelUnavailableError(
            f"CLIP weights {label} are unavailable ({reason}); pass a local file instead, "
            f"e.g. load_clip('{arch}', pretrained='path/to/weights.pt') or --clip-model {arch}:path/to/weights.pt"
        ) from None
    finally:
        root_logger.setLevel(level)
    return model, tokenizer


def _first_line(error: BaseException) -> str:
    """The first line of an exception's message, shortened."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text[:160]


def _wrap(model: nn.Module, tokenizer: Any, name: str, config: dict | None = None,
          mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> CLIPEncoder:
    """Wrap an open_clip model, taking mean/std from the model when not given."""
    mean = mean or getattr(model.visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN
    std = std or getattr(model.visual, "image_std", None) or open_clip.OPENAI_DATASET_STD
    encoder = CLIPEncoder(model.float(), tokenizer, name, mean, std)
    encoder.config = config if config is not None else _config_of(name)
    return encoder


def _config_of(name: str) -> dict | None:
    """The open_clip config of a named architecture, if it has one."""
    arch = name.split(":")[0]
    return open_clip.get_model_config(arch) if not arch.startswith("hf-hub:") else None


def _register_config(config: dict) -> str:
    """Register an open_clip config dict under a stable name derived from its content and return that name."""
    text = json.dumps(config, sort_keys=True)
    name = f"custom-{hashlib.sha256(text.encode()).hexdigest()[:12]}"
    if open_clip.get_model_config(name) is None:
        folder = Path(tempfile.mkdtemp(prefix="clip-config-"))
        (folder / f"{name}.json").write_text(text)
        open_clip.add_model_config(folder)
    return name


def _load_clip_file(path: Path, architecture: str | dict | None, label: str, allow_pickle: bool) -> CLIPEncoder:
    """Build the architecture (from the file's metadata or `architecture`) and load the file's weights."""
    state_dict, metadata = load_state_dict(path, allow_pickle=allow_pickle)
    if "open_clip_config" in metadata:
        config = json.loads(metadata["open_clip_config"])
    elif isinstance(architecture, dict):
        config = architecture
    elif isinstance(architecture, str):
        _check_architecture(architecture, None)
        config = open_clip.get_model_config(architecture)
    else:
        raise InvalidInputError(f"{path} holds no model config; name its architecture, "
                                f"e.g. load_clip('ViT-B-32', pretrained='{path}')")
    arch_name = architecture if isinstance(architecture, str) else _register_config(config)
    model, tokenizer = _create_open_clip(arch_name, None, None, label)
    model = model.float()
    state_dict = {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}
    try:
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as error:  # tensors whose shapes differ from the architecture's
        mismatch = next((line.strip() for line in str(error).splitlines() if "size mismatch" in line), _first_line(error))
        raise InvalidInputError(f"{path} does not match architecture {architecture or 'from its metadata'}: "
                                f"{mismatch[:200]}") from None
    missing = [k for k in missing if not k.endswith("attn_mask")]
    if missing or unexpected:
        raise InvalidInputError(
            f"{path} does not match architecture {architecture or 'from its metadata'}: "
            f"{len(missing)} missing keys (e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})")
    mean = json.loads(metadata["image_mean"]) if "image_mean" in metadata else None
    std = json.loads(metadata["image_std"]) if "image_std" in metadata else None
    return _wrap(model, tokenizer, label, config, mean, std)


def parse_clip_spec(spec: str) -> tuple[str, str | None, float]:
    """Split `NAME[:PRETRAINED][:WEIGHT]` (e.g. `ViT-B-32:openai:0.5`, `RN50:weights.pt`, `shapes-tiny`).

    The weight follows the prompt rule: a trailing number after a ':' that does not follow a digit.
    """
    prefix = "hf-hub:" if spec.startswith("hf-hub:") else ""
    parsed = parse_prompt(spec[len(prefix):])
    name, _, pretrained = parsed.text.partition(":")
    if parsed.stop != float("-inf"):
        raise InvalidInputError(f"CLIP model spec {spec!r} has too many ':' fields; use NAME[:PRETRAINED][:WEIGHT]")
    if prefix and pretrained:
        raise InvalidInputError(f"hf-hub models carry their own weights; drop ':{pretrained}' from {spec!r}")
    return prefix + name.strip(), pretrained.strip() or None, parsed.weight


def load_clip_ensemble(specs: Sequence[str], device: str | torch.device | None = None) -> list[tuple[CLIPEncoder, float]]:
    """Load `NAME[:PRETRAINED][:WEIGHT]` specs as (model, weight) pairs for an ensemble."""
    if not specs:
        raise InvalidInputError("no CLIP model given; e.g. --clip-model ViT-B-32:openai")
    members = []
    for spec in specs:
        name, pretrained, weight = parse_clip_spec(spec)
        members.append((load_clip(name, pretrained, device), weight))
    return members
