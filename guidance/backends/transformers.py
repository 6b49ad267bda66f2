"""The Hugging Face transformers backend: CLIPModel, ChineseCLIPModel, AltCLIPModel and SiglipModel, from an
`hf:OWNER/NAME` hub id (cache first) or a folder written by `save_pretrained`."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..encoder import CLIPEncoder
from ..errors import InvalidInputError, ModelUnavailableError, first_line
from ..network import HUB_HOST, host_reachable, hub_offline
from . import ClipRequest

HUB_PREFIX = "hf:"

# config.json's model_type -> the transformers model class that holds both towers.
MODEL_CLASSES: dict[str, str] = {
    "clip": "CLIPModel",
    "chinese_clip": "ChineseCLIPModel",
    "altclip": "AltCLIPModel",
    "siglip": "SiglipModel",
}
# Text towers whose position ids start after the padding index (RoBERTa-style), so two positions are unusable.
POSITION_OFFSET: dict[str, int] = {"altclip": 2}


class TransformersCLIPEncoder(CLIPEncoder):
    """A transformers two-tower model as a CLIPEncoder; `.model` is the transformers model, `.tokenizer` its
    tokenizer, `.image_processor` the processor whose size, mean and std the shared preprocessing uses."""

    saves_to_folder = True

    def __init__(self, model: nn.Module, tokenizer: Any, image_processor: Any, name: str):
        config = model.config
        image_size, mean, std = processor_settings(image_processor, name)
        if image_size != config.vision_config.image_size:
            raise InvalidInputError(f"CLIP model '{name}': its image processor resizes to {image_size} px but the model "
                                    f"takes {config.vision_config.image_size} px; save the model's own processor with it")
        if len(tokenizer) > config.text_config.vocab_size:
            raise InvalidInputError(f"CLIP model '{name}': its tokenizer has {len(tokenizer)} tokens but the text model "
                                    f"only {config.text_config.vocab_size}; save the model's own tokenizer with it")
        limit = config.text_config.max_position_embeddings - POSITION_OFFSET.get(config.model_type, 0)
        context_length = min(limit, int(getattr(tokenizer, "model_max_length", limit) or limit))
        embed_dim = getattr(config, "projection_dim", None) or config.vision_config.hidden_size
        super().__init__(name, image_size, embed_dim, mean, std, context_length)
        self.model = model.float().eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        # SigLIP was trained on texts padded to the full context; the softmax CLIPs on texts padded to the longest.
        self.padding = "max_length" if config.model_type == "siglip" else "longest"

    @property
    def logit_scale(self) -> torch.Tensor | float:
        """The model's trained temperature, exponentiated."""
        return self.model.logit_scale.exp().float()

    @property
    def logit_bias(self) -> torch.Tensor | None:
        """SigLIP's trained logit bias; None for the softmax CLIPs."""
        return getattr(self.model, "logit_bias", None)

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """The model's own get_image_features of preprocessed pixels."""
        return pooled(self.model.get_image_features(pixel_values=pixels))

    def text_features(self, texts: list[str]) -> torch.Tensor:
        """The model's own get_text_features of the texts, tokenized by its tokenizer."""
        return pooled(self.model.get_text_features(**self.tokenize(texts)))

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """The tokenizer's tensors for texts (on the device), warning when a text is truncated to the context."""
        for text, ids in zip(texts, self.tokenizer(texts)["input_ids"]):
            if len(ids) > self.context_length:
                warnings.warn(f"text truncated to {self.context_length} tokens ({len(ids)} given): {text[:60]!r}...",
                              stacklevel=4)  # the caller of encode_text
        tokens = self.tokenizer(texts, padding=self.padding, truncation=True, max_length=self.context_length,
                                return_tensors="pt")
        names = ("input_ids", "attention_mask", "token_type_ids")
        if self.padding == "max_length":  # SigLIP's text tower takes no attention mask
            names = ("input_ids",)
        return {key: value.to(self.device) for key, value in tokens.items() if key in names}

    def save(self, path: str | Path) -> Path:
        """Save model, tokenizer and image processor into a folder that `load_clip(folder)` restores."""
        path = Path(path)
        if path.suffix:
            raise InvalidInputError(f"a transformers CLIP model saves into a folder; give a path without a suffix, "
                                    f"not {path}")
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        self.image_processor.save_pretrained(path)
        return path


def pooled(output: Any) -> torch.Tensor:
    """The projected embeddings from get_*_features: a tensor (transformers 4) or an output's pooler_output (5)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def processor_settings(image_processor: Any, name: str) -> tuple[int, list[float], list[float]]:
    """(square side, mean, std) from an image processor: its crop size when it crops, else its resize size."""
    size = image_processor.crop_size if getattr(image_processor, "do_center_crop", False) else image_processor.size
    size = dict(size) if size is not None else {}
    sides = {size[key] for key in ("height", "width", "shortest_edge") if size.get(key)}
    mean, std = list(image_processor.image_mean or ()), list(image_processor.image_std or ())
    if len(sides) != 1 or len(mean) != 3 or len(std) != 3:
        raise InvalidInputError(f"CLIP model '{name}': its image processor ({type(image_processor).__name__}: size "
                                f"{size}, mean {mean}, std {std}) is not a square resize with RGB mean and std; "
                                "save the model's own processor with it")
    return sides.pop(), [float(v) for v in mean], [float(v) for v in std]


# --- loaders (rows of guidance.clip_models.CLIP_SOURCES) ------------------------------------------------


def is_hub_id(name: str, pretrained: str | None, architecture: str | dict | None) -> bool:
    """Whether `name` is an `hf:OWNER/NAME` transformers hub id."""
    return name.startswith(HUB_PREFIX)


def is_folder(name: str, pretrained: str | None, architecture: str | dict | None) -> bool:
    """Whether `name` is a local folder (an existing directory, or a path ending in a separator)."""
    return Path(name).is_dir() or name.endswith(("/", "\\"))


def load_hub(request: ClipRequest) -> TransformersCLIPEncoder:
    """A transformers CLIP from the hub (`hf:OWNER/NAME`): the cache first, a download when online."""
    repo = request.name[len(HUB_PREFIX):].strip()
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise InvalidInputError(f"'{request.name}' is not a hub id; write hf:OWNER/NAME, "
                                "e.g. hf:OFA-Sys/chinese-clip-vit-base-patch16")
    offline = not host_reachable(HUB_HOST)
    try:
        if offline:
            with hub_offline():
                config = load_config(repo, request.cache_dir, local_only=True)
                return build(repo, config, request.name, request.cache_dir, local_only=True)
        config = load_config(repo, request.cache_dir, local_only=False)
        return build(repo, config, request.name, request.cache_dir, local_only=False)
    except OSError as error:
        reason = "offline and not in the cache" if offline else f"download failed: {first_line(error)}"
        raise ModelUnavailableError(f"CLIP model {request.name} is unavailable ({reason}); download it once online, "
                                    "or pass a folder saved with save_pretrained: --clip-model path/to/folder") from None


def load_folder(request: ClipRequest) -> TransformersCLIPEncoder:
    """A transformers CLIP from a folder written by `save_pretrained` (model, tokenizer and image processor)."""
    folder = Path(request.name)
    if not folder.is_dir():
        raise InvalidInputError(f"CLIP model folder {folder} does not exist")
    if not (folder / "config.json").is_file():
        weights = sorted(folder.glob("*.safetensors"))
        hint = (f"; for an open_clip checkpoint give the file itself, e.g. {weights[0]}" if weights else
                "; save the model there with model.save_pretrained(folder) (plus its tokenizer and image processor)")
        raise InvalidInputError(f"CLIP model folder {folder} has no config.json{hint}")
    try:
        config = load_config(str(folder), None, local_only=True)
        return build(str(folder), config, request.name, None, local_only=True)
    except OSError as error:
        raise InvalidInputError(f"cannot load CLIP model folder {folder}: {first_line(error)}") from None


def load_config(source: str, cache_dir: str | None, local_only: bool) -> Any:
    """The model's config, refusing model types this backend does not know in one line."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(source, cache_dir=cache_dir, local_files_only=local_only)
    if config.model_type not in MODEL_CLASSES:
        known = ", ".join(f"{cls} ({kind})" for kind, cls in MODEL_CLASSES.items())
        raise InvalidInputError(f"{source} holds a '{config.model_type}' model, not a CLIP this toolkit can load; "
                                f"supported: {known}")
    return config


def build(source: str, config: Any, name: str, cache_dir: str | None, local_only: bool) -> TransformersCLIPEncoder:
    """Load the model class for the config, its tokenizer and its image processor from `source`."""
    import transformers

    model_class = getattr(transformers, MODEL_CLASSES[config.model_type])
    options = {"cache_dir": cache_dir, "local_files_only": local_only}
    logger = logging.getLogger("transformers")
    level = logger.level
    logger.setLevel(logging.ERROR)  # e.g. "some weights were not used": the checks below report what matters
    try:
        model = model_class.from_pretrained(source, config=config, **options)
        image_processor = transformers.AutoImageProcessor.from_pretrained(source, **options)
        tokenizer = transformers.AutoTokenizer.from_pretrained(source, **options)
    except (ImportError, ValueError) as error:  # e.g. a sentencepiece tokenizer without sentencepiece installed
        raise InvalidInputError(f"cannot load the tokenizer or image processor of {name}: {first_line(error)}") from None
    finally:
        logger.setLevel(level)
    return TransformersCLIPEncoder(model, tokenizer, image_processor, name)

