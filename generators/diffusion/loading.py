"""Find, load and save diffusers models: built-in names, local folders, and hub repos (cached, offline-safe).

A folder holds either the pipeline layout (`model_index.json`, `unet/`, `scheduler/`, and for Stable Diffusion
`vae/`, `text_encoder/`, `tokenizer/`) or the older root layout of google/ddpm-* (`config.json`,
`scheduler_config.json` and the weights side by side). Models fine-tuned by this toolkit also carry
`clip_guidance.json`, which records the edit they were tuned for.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from pathlib import Path
from typing import Any, Iterator

import diffusers
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel, UNet2DModel
from huggingface_hub import snapshot_download
from transformers import CLIPTextModel, CLIPTokenizer

from generators.diffusion.models import ClipConditionedDiffusion, DiffusionModel, LatentDiffusion, PixelDiffusion
from guidance.clip_models import load_clip
from guidance.errors import InvalidInputError, ModelUnavailableError, first_line
from guidance.network import HUB_HOST, host_reachable, hub_offline

# Models shipped inside the package: name -> diffusers folder, trained by training/train_diffusion.py (see
# docs/shapes_models.md). shapes-tiny-text (first: menus preselect it): a 32x32 DDPM of the shapes world that follows
# the shapes-tiny CLIP's embedding of the prompt; shapes-tiny: the unconditional DDPM it was trained from, which
# edits better (it reconstructs a rendered image).
_WEIGHTS = Path(__file__).parents[1] / "weights"
BUILTIN_DIFFUSION_MODELS: dict[str, Path] = {"shapes-tiny-text": _WEIGHTS / "shapes-tiny-text-ddpm",
                                             "shapes-tiny": _WEIGHTS / "shapes-tiny-ddpm"}
# Published pixel DDPMs on the hub that the toolkit drives (downloaded once, then cached).
KNOWN_DIFFUSION_MODELS = ("google/ddpm-celebahq-256", "google/ddpm-church-256", "google/ddpm-bedroom-256",
                          "google/ddpm-cat-256")

INFO_FILE = "clip_guidance.json"
LOCAL_FOLDER_HINT = ("pass a local diffusers folder instead: --model path/to/folder "
                     "(python: load_diffusion('path/to/folder'))")
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_PIXEL_PIPELINE = "DDPMPipeline"
_LATENT_PIPELINE = "StableDiffusionPipeline"


@contextlib.contextmanager
def _quiet_libraries() -> Iterator[None]:
    """Silence diffusers' and transformers' loading chatter; failures are reported by us in one line."""
    loggers = [logging.getLogger(name) for name in ("diffusers", "transformers")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def known_diffusion_names() -> list[str]:
    """Names `load_diffusion` accepts without a path: packaged models, then downloadable ones (no repeats)."""
    return list(dict.fromkeys([*BUILTIN_DIFFUSION_MODELS, *KNOWN_DIFFUSION_MODELS]))


def _read_json(path: Path) -> dict[str, Any] | None:
    """A JSON file's content, or None when the file does not exist."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise InvalidInputError(f"cannot read {path}: {first_line(error)}") from None


def _hub_configs(repo: str) -> tuple[Path, bool]:
    """The cached (or freshly downloaded) configs of a hub repo, and whether weights must come from the cache."""
    offline = not host_reachable(HUB_HOST)
    try:
        with hub_offline() if offline else contextlib.nullcontext(), _quiet_libraries():
            folder = snapshot_download(repo, allow_patterns=["*.json", "*.txt"], local_files_only=offline)
    except Exception as error:  # the hub client raises many unrelated types; all mean "not available"
        reason = "offline and not in the cache" if offline else f"download failed: {first_line(error)}"
        raise ModelUnavailableError(f"diffusion model {repo} is unavailable ({reason}); {LOCAL_FOLDER_HINT}") from None
    return Path(folder), offline


def _locate(spec: str) -> tuple[Path, str, bool, str]:
    """(folder holding the configs, source of the weights, weights only from the cache, name) for a model spec.

    The name is what reloads the model from anywhere: the spec itself, or a local folder's absolute path."""
    if spec in BUILTIN_DIFFUSION_MODELS:
        folder = BUILTIN_DIFFUSION_MODELS[spec]
        if not folder.is_dir():
            raise ModelUnavailableError(f"built-in diffusion model '{spec}' is missing its folder {folder}; "
                                        "reinstall the package")
        return folder, str(folder), True, spec
    path = Path(spec).expanduser()
    if path.is_dir():
        return path, str(path), True, str(path.resolve())
    if path.exists():
        raise InvalidInputError(f"{spec} is a file; pass the diffusers model folder that holds model_index.json "
                                "or config.json")
    if _REPO_ID.fullmatch(spec) and not spec.startswith(("./", "../", "~")):
        folder, offline = _hub_configs(spec)
        return folder, spec, offline, spec
    known = ", ".join(BUILTIN_DIFFUSION_MODELS) or "none yet"
    raise ModelUnavailableError(f"diffusion model {spec!r} is neither a folder, a built-in name ({known}) nor a hub "
                                f"repo (owner/name); {LOCAL_FOLDER_HINT}")


def _component(cls: Any, source: str, subfolder: str | None, offline: bool, spec: str) -> Any:
    """Load one part of a model with its library's `from_pretrained`, as float32, failing in one line."""
    try:
        with _quiet_libraries():
            if cls is CLIPTokenizer:
                return cls.from_pretrained(source, subfolder=subfolder or "", local_files_only=offline)
            return cls.from_pretrained(source, subfolder=subfolder, local_files_only=offline).float()
    except (OSError, ValueError, RuntimeError) as error:
        raise ModelUnavailableError(f"cannot load the {subfolder or 'UNet'} of diffusion model {spec} "
                                    f"({first_line(error)}); {LOCAL_FOLDER_HINT}") from None


def folder_info(name_or_path: str | Path) -> dict[str, Any]:
    """What a built-in or local model's folder says of it (its clip_guidance.json: training, recommended settings),
    read without loading the model; {} for hub models and unknown names."""
    spec = str(name_or_path).strip()
    folder = BUILTIN_DIFFUSION_MODELS.get(spec) or Path(spec).expanduser()
    return (_read_json(folder / INFO_FILE) or {}) if spec and folder.is_dir() else {}


def _conditioning_clip(info: dict[str, Any], spec: str) -> torch.nn.Module:
    """The CLIP whose text embeddings a CLIP-conditioned UNet follows, as its folder's info names it."""
    conditioning = info.get("conditioning") or {}
    if not conditioning.get("clip") or "scale" not in conditioning:
        raise InvalidInputError(f"{spec}: its UNet takes a condition vector, but its {INFO_FILE} names no "
                                "conditioning CLIP and scale ({'conditioning': {'clip': NAME, 'scale': S}})")
    return load_clip(str(conditioning["clip"]))


def load_diffusion(name_or_path: str | Path, device: str | torch.device | None = None) -> DiffusionModel:
    """Load a frozen diffusers model by built-in name, local folder, or hub repo id (downloaded once, then cached)."""
    spec = str(name_or_path).strip()
    if not spec:
        raise InvalidInputError("the diffusion model name is empty; e.g. --model google/ddpm-celebahq-256 or a folder")
    folder, source, offline, name = _locate(spec)
    unet_config = _read_json(folder / "unet" / "config.json")
    if unet_config is not None:
        unet_folder, scheduler_config = "unet", _read_json(folder / "scheduler" / "scheduler_config.json")
    else:
        unet_folder, unet_config = None, _read_json(folder / "config.json")
        scheduler_config = _read_json(folder / "scheduler_config.json")
    if unet_config is None or scheduler_config is None:
        raise ModelUnavailableError(f"no diffusers model in {folder}: expected unet/config.json and "
                                    "scheduler/scheduler_config.json, or config.json and scheduler_config.json")
    info = _read_json(folder / INFO_FILE) or {}
    kind = unet_config.get("_class_name")
    if kind == "UNet2DModel" and unet_config.get("in_channels", 3) == 3:
        unet = _component(UNet2DModel, source, unet_folder, offline, spec)
        if unet_config.get("class_embed_type") == "identity":
            model: DiffusionModel = ClipConditionedDiffusion(unet, _conditioning_clip(info, spec), scheduler_config,
                                                             name, info)
        else:
            model = PixelDiffusion(unet, scheduler_config, name, info)
    elif kind == "UNet2DConditionModel" and unet_folder is not None and (folder / "vae").is_dir():
        model = LatentDiffusion(_component(UNet2DConditionModel, source, "unet", offline, spec),
                                _component(AutoencoderKL, source, "vae", offline, spec),
                                _component(CLIPTextModel, source, "text_encoder", offline, spec),
                                _component(CLIPTokenizer, source, "tokenizer", offline, spec),
                                scheduler_config, name, info)
    else:
        raise InvalidInputError(f"{spec} holds a {kind} the toolkit cannot drive; supported: UNet2DModel on RGB pixels "
                                "(google/ddpm-*, or CLIP-conditioned) and Stable Diffusion 1.x/2.x (UNet2DConditionModel + AutoencoderKL)")
    return model if device is None else model.to(device)


def save_diffusion(model: DiffusionModel, folder: str | Path) -> Path:
    """Write a model in the diffusers pipeline layout (safetensors weights) with its toolkit info, loadable by
    `load_diffusion(folder)` and by diffusers' own DDPMPipeline / StableDiffusionPipeline."""
    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    scheduler_class = model.scheduler_config.get("_class_name", "DDPMScheduler")
    index: dict[str, Any] = {"_diffusers_version": diffusers.__version__,
                             "unet": ["diffusers", type(model.unet).__name__], "scheduler": ["diffusers", scheduler_class]}
    model.unet.save_pretrained(folder / "unet")
    (folder / "scheduler").mkdir(exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(model.scheduler_config, indent=2))
    if isinstance(model, LatentDiffusion):
        model.vae.save_pretrained(folder / "vae")
        model.text_encoder.save_pretrained(folder / "text_encoder")
        model.tokenizer.save_pretrained(folder / "tokenizer")
        index.update(_class_name=_LATENT_PIPELINE, vae=["diffusers", "AutoencoderKL"],
                     text_encoder=["transformers", "CLIPTextModel"], tokenizer=["transformers", "CLIPTokenizer"],
                     safety_checker=[None, None], feature_extractor=[None, None], requires_safety_checker=False)
    else:
        index["_class_name"] = _PIXEL_PIPELINE
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    if model.info:
        (folder / INFO_FILE).write_text(json.dumps(model.info, indent=2))
    return folder
