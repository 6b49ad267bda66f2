"""Train or fine-tune a CLIP model with CLIP's symmetric contrastive loss.

Data is either an image-caption CSV (paths relative to the CSV's folder) or the synthetic shapes world
rendered on the fly. Models are any CLIP load_clip takes (an open_clip architecture + pretrained tag or local
weights file such as a RemoteCLIP/GeoRSCLIP `.pt` state dict, read without running pickled code; a built-in
name; a checkpoint file; a transformers `hf:` id or folder) or a new one built from a config (a JSON file, or
the built-in tiny shapes config). A fine-tune is evaluated zero-shot before its first step and after its last
(`--eval-csv`: a labelled folder or CSV, top-1/top-5 per class, as `python -m pipelines.zero_shot --eval`).
Batches depend only on (seed, step), so a resumed run continues exactly where it stopped. The schedule,
checkpoints, resume and error exit are the ones all trainers share (training/core.py).

Data parallel: under `accelerate launch --multi_gpu --num_processes N` each process takes its consecutive share
of every global batch (`--batch-size`, a multiple of N) and the loss is taken over the features of all of them,
gathered with their gradients, so N processes train as one process with the whole batch; the first process
evaluates, checkpoints and saves, and a checkpoint resumes on any number of processes.

CLI: python -m training.train_clip --shapes --steps 2400 --checkpoint-dir runs/clip --out runs/clip.safetensors
     python -m training.train_clip --csv data.csv --model ViT-B-32 --pretrained RemoteCLIP-ViT-B-32.pt \
         --eval-csv eval.csv --eval-label-key label --out tuned.safetensors
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from guidance import CLIPEncoder, load_clip, load_image, save_clip, zero_shot_classify
from guidance.cutouts import AUGMENT_PRESETS, Augment
from guidance.errors import InvalidInputError
from pipelines import zero_shot
from training import core
from training import shapes_world as world
from training.core import (EVAL_SEED, WEIGHTS_FILE, Optimisation, OptimisationConfig, add_optimisation_arguments,
                           check_run, evaluating, gather_with_grad, local_share, on_threads, process_group,
                           require_checkpoint, restore, run_steps, start_data_parallel, train_or_exit)

MAX_LOGIT_SCALE = 100.0
MIXED_PRECISIONS = ("no", "bf16", "fp16")
DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of a {}.", "a picture of a {}.", "a {}.")

# A CLIP-style ResNet (conv nets learn shapes from little data much faster than tiny ViTs) and a narrow text
# transformer: ~4.6 M parameters, 9.3 MB as fp16, most of it the 49408-token embedding table.
TINY_SHAPES_CONFIG: dict = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 3},
}


@dataclass
class TrainConfig(OptimisationConfig):
    """Everything a training run depends on (core's optimisation settings, with this trainer's defaults, and its
    own); the CLI flags map one-to-one onto these fields."""

    batch_size: int = 128
    lr: float = 5e-4
    model: str | None = None
    pretrained: str | None = None
    model_config: str | dict | None = None
    shapes: bool = False
    csv: str | None = None
    csv_image_key: str = "filepath"
    csv_caption_key: str = "caption"
    weight_decay: float = 0.1
    image_size: int | None = None
    augment: str = "none"
    augment_share: float = 1.0
    lock_image: bool = False
    lock_english: bool = False
    mixed_precision: str = "no"
    chinese_share: float = 0.0
    shapeless_share: float = 0.0
    context_length: int | None = None
    eval_every: int = 0
    eval_count: int = 512
    eval_shapes: bool | None = None
    eval_csv: str | None = None
    eval_label_key: str = "label"
    templates: Sequence[str] = DEFAULT_TEMPLATES
    checkpoint_dir: str | None = None
    checkpoint_every: int = 0
    resume: str | None = None
    out: str | None = None
    fp16: bool = False
    num_workers: int = 0
    device: str = "cpu"


@dataclass
class TrainResult:
    """What a run produced: the trained encoder, the loss of each step run, and the final evaluation (and, for a
    fine-tune started afresh, the one before it)."""

    clip: CLIPEncoder
    losses: list[float] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    before: dict[str, float] = field(default_factory=dict)  # a fine-tune's evaluation before its first step
    seconds: float = 0.0


# --- loss ---------------------------------------------------------------------------------------------


def contrastive_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric cross-entropy over the batch's similarity matrix; ``logit_scale`` is the log temperature."""
    scale = logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)
    logits = scale * image_features @ text_features.T
    targets = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


# --- data ---------------------------------------------------------------------------------------------


def _resize_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the shorter side of a CHW image to ``size`` and crop the centre square."""
    image = TF.resize(image, size, antialias=True)
    return TF.center_crop(image, [size, size]).clamp(0, 1)


class CaptionCSV(Dataset):
    """Images and captions listed in a CSV; relative image paths are resolved against the CSV's folder."""

    def __init__(self, path: str | Path, image_key: str = "filepath", caption_key: str = "caption", image_size: int = 224):
        """Read and check the CSV: both columns present, non-empty captions, every image file exists."""
        self.path = Path(path)
        self.image_size = image_size
        self.paths, self.captions = _read_caption_csv(self.path, image_key, caption_key)

    def __len__(self) -> int:
        """Number of rows."""
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        """The image (CHW in [0, 1], resized and centre-cropped) and caption of one row."""
        return _resize_crop(load_image(self.paths[index])[0], self.image_size), self.captions[index]


def _read_caption_csv(path: Path, image_key: str, caption_key: str) -> tuple[list[Path], list[str]]:
    """Image paths and captions from a CSV, with one-line errors for anything wrong."""
    if not path.is_file():
        raise InvalidInputError(f"CSV file not found: {path}")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        for key, flag in ((image_key, "--csv-image-key"), (caption_key, "--csv-caption-key")):
            if key not in columns:
                raise InvalidInputError(f"{path} has no column {key!r} (columns: {', '.join(columns) or 'none'}); "
                                        f"name the right one with {flag}")
        rows = list(reader)
    if not rows:
        raise InvalidInputError(f"{path} has a header but no rows; add one row per image")
    paths, captions = [], []
    for line, row in enumerate(rows, start=2):
        image = Path(row[image_key] or "")
        image = image if image.is_absolute() else path.parent / image
        if not row[image_key] or not image.is_file():
            raise InvalidInputError(f"{path} line {line}: image file not found: {image}")
        if not (row[caption_key] or "").strip():
            raise InvalidInputError(f"{path} line {line}: empty caption for {image}")
        paths.append(image)
        captions.append(row[caption_key].strip())
    return paths, captions


class StepBatches(Sampler):
    """Batch indices as a pure function of (seed, step): sequential for streams, reshuffled per epoch otherwise."""

    def __init__(self, size: int, batch_size: int, start: int, stop: int, seed: int, shuffle: bool):
        """Yield the batches of steps ``start`` to ``stop - 1`` over a dataset of ``size`` items."""
        self.size, self.batch_size, self.start, self.stop = size, batch_size, start, stop
        self.seed, self.shuffle = seed, shuffle
        self._orders: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        """Number of batches."""
        return max(self.stop - self.start, 0)

    def _order(self, epoch: int) -> np.ndarray:
        """The seeded permutation of one epoch (only the latest epoch's is kept)."""
        if epoch not in self._orders:
            self._orders = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.size)}
        return self._orders[epoch]

    def batch(self, step: int) -> list[int]:
        """The dataset indices of one step's batch."""
        positions = range(step * self.batch_size, (step + 1) * self.batch_size)
        if not self.shuffle:
            return [p % self.size for p in positions]
        return [int(self._order(p // self.size)[p % self.size]) for p in positions]

    def __iter__(self) -> Iterator[list[int]]:
        """This process's share of the batches (all of each for one process), in step order."""
        return (list(local_share(self.batch(step))) for step in range(self.start, self.stop))


def _training_data(config: TrainConfig, image_size: int, start: int) -> DataLoader:
    """A loader over the shapes stream or the CSV, starting at step ``start``."""
    if config.shapes:
        dataset = world.ShapesDataset(config.steps * config.batch_size, config.seed, "train", image_size,
                                      chinese_share=config.chinese_share, shapeless_share=config.shapeless_share)
    else:
        dataset = CaptionCSV(config.csv, config.csv_image_key, config.csv_caption_key, image_size)
    sampler = StepBatches(len(dataset), config.batch_size, start, config.steps, config.seed, not config.shapes)
    # Its own generator: the loader's seed draw must not shift the global stream the augmentations draw from,
    # or a resumed run would augment differently from an uninterrupted one.
    return DataLoader(dataset, batch_sampler=sampler, num_workers=config.num_workers,
                      persistent_workers=False, prefetch_factor=4 if config.num_workers else None,
                      generator=torch.Generator().manual_seed(config.seed))


# --- evaluation ---------------------------------------------------------------------------------------


def _classify(clip: CLIPEncoder, images: torch.Tensor, labels: Sequence[str], templates: Sequence[str],
              chunk: int = 256) -> torch.Tensor:
    """Zero-shot probabilities (B, L), computed in chunks of images."""
    return torch.cat([zero_shot_classify(clip, images[i:i + chunk], labels, templates)
                      for i in range(0, len(images), chunk)])


def evaluate_shapes(clip: CLIPEncoder, count: int = 512, seed: int = EVAL_SEED, split: str = "held_out",
                    language: str = "en") -> dict[str, float]:
    """Zero-shot accuracy on shapes of ``split``: colour and shape read off a ranking of all (colour, shape) prompts
    in ``language`` ('en' or 'zh'; Chinese metrics are named ``zh_*``)."""
    dataset = world.ShapesDataset(count, seed, split, clip.image_size, unnamed=False)
    items = [dataset.item(i) for i in range(count)]
    images = torch.from_numpy(np.stack([image for image, _, _ in items])).permute(0, 3, 1, 2).float().div(255)
    images = images.to(clip.device)
    specs = [spec for _, _, spec in items]
    colours, shapes = list(world.COLOURS), list(world.SHAPES)
    true_colour = torch.tensor([colours.index(s.colour) for s in specs])
    true_shape = torch.tensor([shapes.index(s.shape) for s in specs])
    templates = world.PROMPT_TEMPLATES_ZH if language == "zh" else world.PROMPT_TEMPLATES
    with evaluating(clip.model):
        pairs = _classify(clip, images, world.pair_labels(language), templates).cpu()
        colour_only = _classify(clip, images, world.colour_labels(language), templates).cpu()
        shape_only = _classify(clip, images, world.shape_labels(language), templates).cpu()
    pairs = pairs.view(count, len(colours), len(shapes))
    best_pair = pairs.flatten(1).argmax(1)
    prefix = "zh_" if language == "zh" else ""
    return {f"{prefix}{name}": value for name, value in {
        "colour_acc": (pairs.sum(2).argmax(1) == true_colour).float().mean().item(),
        "shape_acc": (pairs.sum(1).argmax(1) == true_shape).float().mean().item(),
        "pair_acc": ((best_pair // len(shapes) == true_colour) & (best_pair % len(shapes) == true_shape)).float().mean().item(),
        "colour_prompt_acc": (colour_only.argmax(1) == true_colour).float().mean().item(),
        "shape_prompt_acc": (shape_only.argmax(1) == true_shape).float().mean().item(),
    }.items()}


def evaluate_csv(clip: CLIPEncoder, path: str | Path, label_key: str, templates: Sequence[str],
                 image_key: str = "filepath") -> dict[str, float]:
    """Zero-shot accuracy on a labelled folder (one subfolder per class) or a CSV's ``label_key`` column, by
    pipelines.zero_shot.evaluate: ``csv_top1``, ``csv_topK`` (K = min(5, classes)) and ``csv_top1[CLASS]``."""
    with evaluating(clip.model):
        result = zero_shot.evaluate(clip, path, templates, label_key, image_key)
    return {"csv_top1": result.overall_top1, f"csv_top{result.k}": result.overall_topk,
            **{f"csv_top1[{name}]": top1 for name, top1 in zip(result.classes, result.top1)}}


def evaluate(clip: CLIPEncoder, config: TrainConfig) -> dict[str, float]:
    """All evaluations the config asks for (held-out shapes, CSV labels)."""
    metrics: dict[str, float] = {}
    if config.eval_shapes if config.eval_shapes is not None else config.shapes:
        metrics.update(evaluate_shapes(clip, config.eval_count))
        if config.chinese_share:
            metrics.update(evaluate_shapes(clip, config.eval_count, language="zh"))
    if config.eval_csv:
        metrics.update(evaluate_csv(clip, config.eval_csv, config.eval_label_key, config.templates,
                                    config.csv_image_key))
    return metrics


# --- model, optimiser, checkpoints --------------------------------------------------------------------


def _architecture(config: TrainConfig) -> dict:
    """The open_clip config dict for a model trained from scratch."""
    spec = config.model_config
    if spec is None:
        return copy.deepcopy(TINY_SHAPES_CONFIG)
    if isinstance(spec, dict):
        return copy.deepcopy(spec)
    path = Path(spec)
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise InvalidInputError(f"cannot read model config {path}: {type(error).__name__}; give a JSON file "
                                "with embed_dim, vision_cfg and text_cfg") from None


def build_model(config: TrainConfig) -> CLIPEncoder:
    """The encoder to train: a loaded model to fine-tune, or a new seeded one from a config."""
    torch.manual_seed(config.seed)
    if config.model is not None:
        clip = load_clip(config.model, config.pretrained, config.device)
        return with_context_length(clip, config.context_length) if config.context_length else clip
    return load_clip("shapes-tiny-scratch", device=config.device, architecture=_architecture(config))


def with_context_length(clip: CLIPEncoder, context_length: int) -> CLIPEncoder:
    """An open_clip model with a longer text context (e.g. for Chinese, which byte-level BPE spells in ~3 tokens a
    character): the same weights, the new positions starting as copies of the last trained one plus a little noise."""
    config = getattr(clip, "config", None)
    old = clip.context_length
    if config is None or "text_cfg" not in config or "hf_model_name" in config["text_cfg"]:
        raise InvalidInputError(f"--context-length needs an open_clip model with its own text tower, not {clip.name}")
    if context_length < old:
        raise InvalidInputError(f"--context-length {context_length} is shorter than {clip.name}'s {old}; give more")
    config = copy.deepcopy(config)
    config["text_cfg"]["context_length"] = context_length
    longer = load_clip(f"{clip.name}-context-{context_length}", device=clip.device, architecture=config)
    state = clip.model.state_dict()
    positions = state["positional_embedding"]
    extra = positions[-1:].repeat(context_length - old, 1)
    state["positional_embedding"] = torch.cat([positions, extra + 0.01 * torch.randn_like(extra)])
    longer.model.load_state_dict(state)
    return longer


def build_optimisation(clip: CLIPEncoder, config: TrainConfig, scaler: torch.amp.GradScaler | None = None
                       ) -> Optimisation:
    """AdamW with weight decay on matrices only (not on gains, biases, embeddings' scale or temperature; none under
    --lock-english, where decay would shrink the frozen rows too), on the shared warm-up + cosine schedule,
    decaying to zero; `scaler` is fp16's loss scaler (None otherwise)."""
    trained = [p for p in clip.model.parameters() if p.requires_grad]
    decay = [] if config.lock_english else [p for p in trained if p.ndim >= 2]
    rest = [p for p in trained if p.ndim < 2 or config.lock_english]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.98), eps=1e-6)
    optimisation = Optimisation(optimizer, config.warmup_steps, config.steps, config.grad_clip, final_lr_share=0.0)
    optimisation.scaler = scaler
    return optimisation


def save_checkpoint(directory: str | Path, clip: CLIPEncoder, optimisation: Optimisation, step: int) -> Path:
    """Write `directory/step-N` in the shared layout, its `model.safetensors` (a transformers model: the folder
    `model`) loadable by load_clip."""
    return core.save_checkpoint(directory, step, lambda path: save_clip(clip, checkpoint_weights(path, clip)),
                                optimisation)


def checkpoint_weights(path: Path, clip: CLIPEncoder | None = None) -> Path:
    """Where a checkpoint's weights are: `path` (model.safetensors), or the folder of the same name without its
    suffix for a model that saves into a folder (`clip` given: where to write; else where they were written)."""
    folder = path.with_suffix("")
    writes_folder = clip.saves_to_folder if clip is not None else folder.is_dir() and not path.exists()
    return folder if writes_folder else path


def load_checkpoint(path: str | Path, config: TrainConfig, scaler: torch.amp.GradScaler | None = None
                    ) -> tuple[CLIPEncoder, Optimisation, int]:
    """Restore model, optimisation (with `scaler`, fp16's loss scaler), step and torch RNG from a checkpoint (or
    the latest in a directory)."""
    folder = require_checkpoint(path)
    clip = load_clip(str(checkpoint_weights(folder / WEIGHTS_FILE)), device=config.device)
    _make_trainable(clip, config)
    optimisation = build_optimisation(clip, config, scaler)
    state = restore(folder, optimisation)
    return clip, optimisation, int(state["step"])


def save_weights(clip: CLIPEncoder, path: str | Path, fp16: bool = False, name: str | None = None) -> Path:
    """Save the trained model for load_clip, optionally as fp16 to halve the file."""
    export = copy.deepcopy(clip).cpu()
    export.model.eval().requires_grad_(False)
    if fp16:
        export.model.half()
    if name is not None:
        export.name = name
    save_clip(export, path)
    return Path(path)


def _make_trainable(clip: CLIPEncoder, config: TrainConfig) -> None:
    """Put the model in training mode with gradients on; with ``lock_image`` the image tower stays frozen in eval
    mode (its batch-norm statistics too), so only the text side learns (LiT, Zhai et al. 2022); with
    ``lock_english`` only the embeddings of the tokens English text never produces learn (`english_free_tokens`)."""
    if config.lock_english:
        clip.model.eval().requires_grad_(False)
        embedding = clip.model.token_embedding.weight
        embedding.requires_grad_(True)
        if not hasattr(embedding, "trained_rows"):  # one hook, however often the model goes back to training
            _train_only_rows(embedding, english_free_tokens(clip))
        return
    clip.model.train().requires_grad_(True)
    if config.lock_image:
        visual = getattr(clip.model, "visual", None) or getattr(clip.model, "vision_model", None)
        if visual is None:
            raise InvalidInputError(f"--lock-image: {clip.name} has no image tower named visual or vision_model")
        visual.eval().requires_grad_(False)


def english_free_tokens(clip: CLIPEncoder) -> torch.Tensor:
    """The ids of the tokens that ASCII text never produces under CLIP's byte-level BPE (those spelling a byte of
    128 or more): a new language written outside ASCII (Chinese, in about three such tokens a character) can learn
    them while every English text keeps its embedding bit for bit."""
    tokenizer = getattr(clip, "tokenizer", None)
    vocabulary, byte_of = getattr(tokenizer, "encoder", None), getattr(tokenizer, "byte_decoder", None)
    if vocabulary is None or byte_of is None or not hasattr(clip.model, "token_embedding"):
        raise InvalidInputError(f"--lock-english needs an open_clip model with CLIP's byte-level BPE tokenizer and "
                                f"its own text tower; {clip.name} has another; use --lock-image instead")
    return torch.tensor(sorted(index for token, index in vocabulary.items()
                               if any(byte_of[char] >= 0x80 for char in token.removesuffix("</w>"))))


def _train_only_rows(weight: torch.nn.Parameter, rows: torch.Tensor) -> None:
    """Let `weight` learn in the given rows only (`weight.trained_rows`): a gradient hook zeroes the others, so
    Adam leaves them as they are."""
    mask = torch.zeros(weight.shape[0], 1, dtype=weight.dtype, device=weight.device)
    mask[rows] = 1
    weight.trained_rows = rows
    weight.register_hook(lambda grad: grad * mask)


# --- training loop ------------------------------------------------------------------------------------


def _check_config(config: TrainConfig) -> None:
    """Refuse settings that cannot train, with the fix in the message."""
    if config.shapes == bool(config.csv):
        raise InvalidInputError("choose exactly one training set: --shapes or --csv PATH")
    if config.model is not None and config.model_config is not None:
        raise InvalidInputError("--model fine-tunes an existing model and --model-config builds a new one; give one")
    check_run(config.steps, config.batch_size)
    if config.batch_size < 2:
        raise InvalidInputError("--batch-size must be at least 2 for a contrastive loss")
    if config.context_length is not None and config.model is None:
        raise InvalidInputError("--context-length lengthens a model to fine-tune (--model); a new model takes its "
                                "context from --model-config")
    if config.lock_english and config.model is None:
        raise InvalidInputError("--lock-english teaches a trained English model (--model) a new language; a new "
                                "model has no English to keep")
    if not 0 <= config.chinese_share <= 1:
        raise InvalidInputError(f"--chinese-share must be between 0 and 1, got {config.chinese_share}")
    if not 0 <= config.shapeless_share <= 1:
        raise InvalidInputError(f"--shapeless-share must be between 0 and 1, got {config.shapeless_share}")
    if config.shapeless_share and not config.shapes:
        raise InvalidInputError("--shapeless-share mixes shapeless images into the --shapes stream; add --shapes")
    if not 0 <= config.augment_share <= 1:
        raise InvalidInputError(f"--augment-share must be between 0 and 1, got {config.augment_share}")


def train_step(clip: CLIPEncoder, optimisation: Optimisation, images: torch.Tensor, captions: Sequence[str],
               autocast: Callable[[], ContextManager] = contextlib.nullcontext) -> float:
    """One optimisation step on a batch (skipped when its gradient is not finite); returns the loss before it.
    The encoders run under `autocast` (mixed precision), the loss in fp32. Under data parallel the loss is over
    every process's features (the global batch)."""
    with autocast():
        image_features, text_features = clip.encode_image(images), clip.encode_text(list(captions))
    loss = contrastive_loss(gather_with_grad(image_features.float()), gather_with_grad(text_features.float()),
                            clip.model.logit_scale)
    if optimisation.step(loss):
        with torch.no_grad():
            clip.model.logit_scale.clamp_(0, math.log(MAX_LOGIT_SCALE))
    return loss.item()


def _start(config: TrainConfig, scaler: torch.amp.GradScaler | None) -> tuple[CLIPEncoder, Optimisation, int]:
    """The model, its optimisation (with fp16's loss scaler) and the first step: from the checkpoint to resume, or
    new."""
    if config.resume:
        return load_checkpoint(config.resume, config, scaler)
    clip = build_model(config)
    _make_trainable(clip, config)
    return clip, build_optimisation(clip, config, scaler), 0


@dataclass
class MixedPrecision:
    """The run's mixed precision: autocast around the encoders and, for fp16, a loss scaler (None otherwise)."""

    autocast: Callable[[], ContextManager]
    scaler: torch.amp.GradScaler | None


def mixed_precision(config: TrainConfig) -> MixedPrecision:
    """The mixed precision `--mixed-precision` asks for; its default is what `accelerate launch --mixed_precision`
    (or `accelerate config`) chose for the run."""
    if config.mixed_precision not in MIXED_PRECISIONS:
        raise InvalidInputError(f"--mixed-precision must be one of {', '.join(MIXED_PRECISIONS)}, got "
                                f"{config.mixed_precision!r}")
    device_type = torch.device(config.device).type
    if config.mixed_precision == "no":
        return MixedPrecision(contextlib.nullcontext, None)
    if config.mixed_precision == "fp16" and device_type != "cuda":
        raise InvalidInputError("--mixed-precision fp16 needs a CUDA GPU (its loss scaler); use bf16 on the CPU")
    dtype = torch.float16 if config.mixed_precision == "fp16" else torch.bfloat16
    scaler = torch.amp.GradScaler(device_type) if dtype == torch.float16 else None
    return MixedPrecision(lambda: torch.autocast(device_type, dtype=dtype), scaler)


@on_threads
def train(config: TrainConfig) -> TrainResult:
    """Run (or resume) training as configured; evaluate, checkpoint and save the final weights."""
    _check_config(config)
    config = dataclasses.replace(config, device=start_data_parallel(config.device))
    local_share(range(config.batch_size))  # refuses a batch that does not split over the processes
    first = process_group()[0] == 0  # evaluates, checkpoints and saves; the others only train
    if not first:
        config = dataclasses.replace(config, progress=False, eval_every=0)
    started = time.perf_counter()
    precision = mixed_precision(config)
    clip, optimisation, start = _start(config, precision.scaler)
    batches = iter(_training_data(config, config.image_size or clip.image_size, start))
    augment = Augment(config.augment)
    result = TrainResult(clip)

    def step(index: int) -> dict[str, str]:
        """One training step on the next batch; what the progress bar shows."""
        images, captions = next(batches)
        images = images.to(config.device)
        augmented = round(len(images) * config.augment_share)
        if augmented:
            images = torch.cat([augment(images[:augmented]), images[augmented:]])
        loss = train_step(clip, optimisation, images, captions, precision.autocast)
        result.losses.append(loss)
        return {"loss": f"{loss:.3f}", "scale": f"{clip.model.logit_scale.exp().item():.1f}"}

    def evaluate_during(done: int) -> None:
        """Evaluate mid-run and print the figures; the evaluation's eval mode ends in training mode again."""
        tqdm.write(f"step {done}: " + _format(evaluate(clip, config)))
        _make_trainable(clip, config)

    if start == 0 and config.model is not None and first:  # a fine-tune: where it starts from
        result.before = evaluate(clip, config)
        _make_trainable(clip, config)
        if result.before:
            tqdm.write("before: " + _format(result.before))
    run_steps(step, start, config, "train", evaluate=evaluate_during,
              checkpoint=(lambda done: save_checkpoint(config.checkpoint_dir, clip, optimisation, done))
              if config.checkpoint_dir and first else None, final_checkpoint=True)
    clip.model.eval().requires_grad_(False)
    result.metrics = evaluate(clip, config) if first else {}
    if config.out and first:
        save_weights(clip, config.out, config.fp16)
    result.seconds = time.perf_counter() - started
    return result



def _format(metrics: dict[str, float]) -> str:
    """Metrics as `name=value` pairs on one line."""
    return " ".join(f"{k}={v:.3f}" for k, v in metrics.items()) or "no evaluation configured"


# --- command line -------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface; every flag sets the TrainConfig field of the same name."""
    d = TrainConfig()
    p = argparse.ArgumentParser(prog="python -m training.train_clip", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    m = p.add_argument_group("model")
    m.add_argument("--model", "--init", dest="model",
                   help="model to fine-tune: any name load_clip takes (open_clip architecture, built-in name, "
                        "checkpoint file, hf:OWNER/NAME or save_pretrained folder)")
    m.add_argument("--pretrained", help="open_clip pretrained tag, or a local weights file (e.g. a RemoteCLIP .pt state "
                                        "dict, read without running pickled code) for the --model architecture")
    m.add_argument("--model-config", help="JSON open_clip config for a new model (default without --model: built-in tiny config)")
    m.add_argument("--context-length", type=int,
                   help="lengthen --model's text context to this many tokens (Chinese needs ~3 BPE tokens a character)")
    m.add_argument("--lock-english", action="store_true",
                   help="teach an English open_clip model a language written outside ASCII (Chinese) without changing "
                        "anything English uses: only the embeddings of the tokens ASCII text never produces train, so "
                        "images and English texts embed bit for bit as before")
    m.add_argument("--lock-image", action="store_true",
                   help="freeze the image tower (and its batch-norm statistics) and train only the text side, as "
                        "LiT does: new captions or a new language map into the space the image tower already has")
    data = p.add_argument_group("data")
    data.add_argument("--shapes", action="store_true", help="train on the synthetic shapes world, rendered on the fly")
    data.add_argument("--csv", help="image-caption CSV; image paths relative to its folder")
    data.add_argument("--csv-image-key", "--image-column", dest="csv_image_key", default=d.csv_image_key,
                      help="CSV column holding image paths (also of --eval-csv)")
    data.add_argument("--csv-caption-key", "--caption-column", dest="csv_caption_key", default=d.csv_caption_key,
                      help="CSV column holding captions")
    data.add_argument("--image-size", type=int, help="render/crop size (default: the model's input size)")
    data.add_argument("--augment", choices=AUGMENT_PRESETS, default=d.augment,
                      help="augment training images as guidance augments cutouts (kornia presets plus noise), so "
                           "the model judges augmented cutouts as it judges clean images")
    data.add_argument("--augment-share", type=float, default=d.augment_share,
                      help="share of each batch that is augmented; the rest stays clean")
    data.add_argument("--chinese-share", type=float, default=d.chinese_share,
                      help="--shapes: share of captions given in Chinese (same images); also evaluates in Chinese")
    data.add_argument("--shapeless-share", type=float, default=d.shapeless_share,
                      help="--shapes: share of images with no shape (a colour field, colour blotches or an empty "
                           "background, captioned so): teaches the model that a field is not a shape")
    data.add_argument("--num-workers", type=int, default=d.num_workers, help="data loader worker processes")
    o = p.add_argument_group("optimisation")
    add_optimisation_arguments(o, d)
    o.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay on weight matrices")
    o.add_argument("--device", default=d.device, help="torch device")
    o.add_argument("--mixed-precision", choices=MIXED_PRECISIONS,
                   default=os.environ.get("ACCELERATE_MIXED_PRECISION", d.mixed_precision),
                   help="mixed precision: the encoders under bf16 or fp16 autocast (fp16 with a loss scaler, CUDA "
                        "only); `accelerate launch --mixed_precision` (or `accelerate config`) sets the default")
    e = p.add_argument_group("evaluation")
    e.add_argument("--eval-every", type=int, default=d.eval_every, help="evaluate every N steps (0: only at the end)")
    e.add_argument("--eval-count", type=int, default=d.eval_count, help="held-out shape images per evaluation")
    e.add_argument("--eval-shapes", action=argparse.BooleanOptionalAction, default=None,
                   help="zero-shot on held-out shapes (default: on with --shapes)")
    e.add_argument("--eval-csv", metavar="FOLDER_OR_CSV",
                   help="zero-shot top-1/top-5 accuracy, per class, on a folder with one subfolder of images per "
                        "class or a CSV of images and labels (a fine-tune: before and after)")
    e.add_argument("--eval-label-key", "--label-column", dest="eval_label_key", default=d.eval_label_key,
                   help="label column of an --eval-csv CSV")
    e.add_argument("--template", dest="templates", action="append",
                   help=f"prompt template for --eval-csv labels, repeatable (default: {list(DEFAULT_TEMPLATES)})")
    c = p.add_argument_group("checkpoints and output")
    c.add_argument("--checkpoint-dir", help="folder of the step-N checkpoints (the latest kept; one after the last step)")
    c.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every,
                   help="checkpoint every N steps (0: only after the last step)")
    c.add_argument("--resume", help="checkpoint folder (or checkpoint dir: its latest step) to continue from")
    c.add_argument("--out", help="write the trained model here as safetensors for load_clip")
    c.add_argument("--fp16", action="store_true", help="store --out weights as fp16")
    return p


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: train, print the final metrics; a user error exits 2 with one line on stderr."""
    args = vars(build_parser().parse_args(argv))
    args["templates"] = tuple(args["templates"] or DEFAULT_TEMPLATES)
    result = train_or_exit(train, TrainConfig(**args))
    print(f"done in {result.seconds:.0f} s; final loss {result.losses[-1] if result.losses else float('nan'):.4f}; "
          + _format(result.metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
