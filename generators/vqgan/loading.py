"""Find, download and load VQGAN weights: known names, packaged models, hub repos, local taming files, safetensors."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from generators.vqgan.config import VQGANConfig, parse_config, taming_config
from generators.vqgan.model import VQGAN
from guidance.checkpoints import TORCH_SUFFIXES, cached_download, load_state_dict, save_state_dict
from guidance.errors import InvalidInputError, ModelUnavailableError

ConfigLike = str | Path | Mapping[str, Any]

CONFIG_METADATA_KEY = "vqgan_config"
LOCAL_FILES_HINT = ("pass local files: --vqgan path/to/last.ckpt --vqgan-config path/to/model.yaml "
                    "(python: load_vqgan('path/to/last.ckpt', config='path/to/model.yaml'))")

# Models shipped inside the package: name -> .safetensors file holding its config in the metadata.
BUILTIN_VQGANS: dict[str, Path] = {"shapes-tiny": Path(__file__).parents[1] / "weights" / "shapes-tiny-vqgan.safetensors"}


@dataclass(frozen=True)
class KnownVQGAN:
    """A published taming checkpoint: its architecture and the mirrors serving its `last.ckpt`, tried in order."""

    config: dict[str, Any]
    sources: tuple[str, ...]
    sha256: str | None = None


_HEIBOX = "https://heibox.uni-heidelberg.de"

# Architectures from the configs/model.yaml published next to each checkpoint (taming-transformers README).
KNOWN_VQGANS: dict[str, KnownVQGAN] = {
    "vqgan_imagenet_f16_16384": KnownVQGAN(
        config=taming_config(gumbel=False, ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, attn_resolutions=(16,),
                             z_channels=256, embed_dim=256, n_embed=16384, resolution=256),
        sources=(f"{_HEIBOX}/d/a7530b09fed84f80a887/files/?p=%2Fckpts%2Flast.ckpt&dl=1",
                 f"{_HEIBOX}/f/867b05fc8c4841768640/?dl=1",
                 "http://mirror.io.community/blob/vqgan/vqgan_imagenet_f16_16384.ckpt"),
    ),
    "vqgan_imagenet_f16_1024": KnownVQGAN(
        config=taming_config(gumbel=False, ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, attn_resolutions=(16,),
                             z_channels=256, embed_dim=256, n_embed=1024, resolution=256),
        sources=(f"{_HEIBOX}/d/8088892a516d4e3baf92/files/?p=%2Fckpts%2Flast.ckpt&dl=1",
                 f"{_HEIBOX}/f/140747ba53464f49b476/?dl=1"),
    ),
    "vqgan_gumbel_f8": KnownVQGAN(
        config=taming_config(gumbel=True, ch=128, ch_mult=(1, 1, 2, 4), num_res_blocks=2, attn_resolutions=(32,),
                             z_channels=256, embed_dim=256, n_embed=8192, resolution=256),
        sources=(f"{_HEIBOX}/d/2e5662443a6b4307b470/files/?p=%2Fckpts%2Flast.ckpt&dl=1",),
    ),
}

_CHECKPOINT_PATTERNS = ("ckpts/last.ckpt", "checkpoints/last.ckpt", "last.ckpt", "*.safetensors",
                        *(f"*{suffix}" for suffix in TORCH_SUFFIXES))
_CONFIG_PATTERNS = ("configs/model.yaml", "model.yaml", "configs/*-project.yaml", "*.yaml")


def _mismatch_report(expected: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor]) -> str:
    """Describe (briefly) how a state dict differs from the expected one, or return '' when it fits."""
    missing = sorted(expected.keys() - weights.keys())
    unexpected = sorted(weights.keys() - expected.keys())
    resized = sorted(key for key in expected.keys() & weights.keys() if expected[key].shape != weights[key].shape)
    groups = (("missing", missing), ("unexpected", unexpected), ("with other shapes", resized))
    parts = [f"{len(keys)} {label} (e.g. {', '.join(keys[:3])})" for label, keys in groups if keys]
    return "; ".join(parts)


def _build(config: VQGANConfig, state: Mapping[str, torch.Tensor], source: object) -> VQGAN:
    """A VQGAN of `config` holding the weights of taming state dict `state` (training-loss weights dropped).

    The module is built on the meta device and takes the loaded tensors over, so no random init runs and no
    second copy of the weights is made."""
    with torch.device("meta"):
        model = VQGAN(config)
    expected = model.state_dict()
    weights = {key: value for key, value in state.items() if not key.startswith("loss.")}
    report = _mismatch_report(expected, weights)
    if report:
        raise InvalidInputError(f"{source} does not fit its VQGAN config: {report}; pass the config of this checkpoint")
    model.load_state_dict({key: value.to(expected[key].dtype) for key, value in weights.items()}, assign=True)
    return model


def _config_beside(checkpoint: Path) -> Path:
    """The YAML config next to a checkpoint: same stem, `model.yaml`, or taming's `../configs/model.yaml`."""
    candidates = (checkpoint.with_suffix(".yaml"), checkpoint.parent / "model.yaml",
                  checkpoint.parent.parent / "configs" / "model.yaml")
    found = next((candidate for candidate in candidates if candidate.is_file()), None)
    if found is None:
        raise InvalidInputError(f"no VQGAN config found for {checkpoint}; "
                                "pass config='path/to/model.yaml' (--vqgan-config)")
    return found


def _config_from_metadata(metadata: Mapping[str, str], path: Path) -> dict[str, Any]:
    """The config stored in a safetensors header by `save_vqgan`."""
    if CONFIG_METADATA_KEY not in metadata:
        raise InvalidInputError(f"{path} has no '{CONFIG_METADATA_KEY}' metadata; "
                                "pass config='path/to/model.yaml' (--vqgan-config)")
    try:
        return json.loads(metadata[CONFIG_METADATA_KEY])
    except json.JSONDecodeError as error:
        raise InvalidInputError(f"{path} holds a malformed '{CONFIG_METADATA_KEY}': {error}") from error


def _load_file(path: Path, config: ConfigLike | None, allow_pickle: bool) -> VQGAN:
    """Load a checkpoint file, taking the config from the argument, the safetensors header, or a YAML beside it."""
    if config is None and path.suffix != ".safetensors":
        config = _config_beside(path)
    parsed = None if config is None else parse_config(config)
    state, metadata = load_state_dict(path, allow_pickle=allow_pickle)
    return _build(parsed or parse_config(_config_from_metadata(metadata, path)), state, path)


def _find_one(directory: Path, patterns: tuple[str, ...]) -> Path | None:
    """The file matching the first pattern that matches anything; several matches for it are ambiguous."""
    for pattern in patterns:
        matches = sorted(path for path in directory.glob(pattern) if path.is_file())
        if len(matches) > 1:
            names = ", ".join(str(path.relative_to(directory)) for path in matches[:4])
            raise InvalidInputError(f"{directory} holds several candidate files ({names}); pass the file to use")
        if matches:
            return matches[0]
    return None


def _load_directory(directory: Path, config: ConfigLike | None, allow_pickle: bool) -> VQGAN:
    """Load a taming directory (`ckpts/last.ckpt` + `configs/model.yaml`) or one holding a safetensors file."""
    checkpoint = _find_one(directory, _CHECKPOINT_PATTERNS)
    if checkpoint is None:
        raise ModelUnavailableError(f"no VQGAN checkpoint in {directory}; expected ckpts/last.ckpt with "
                                    "configs/model.yaml (taming layout) or a .safetensors file")
    if config is None and checkpoint.suffix != ".safetensors":
        config = _find_one(directory, _CONFIG_PATTERNS)
    return _load_file(checkpoint, config, allow_pickle)


def _load_known(name: str, config: ConfigLike | None, allow_pickle: bool) -> VQGAN:
    """Download (once) and load a published taming checkpoint by name."""
    known = KNOWN_VQGANS[name]
    parsed = parse_config(config or known.config)
    hint = f"to use VQGAN {name!r} from files you have, {LOCAL_FILES_HINT}"
    path = cached_download(known.sources, f"{name}.ckpt", sha256=known.sha256, subdir="vqgan", hint=hint)
    try:
        state, _ = load_state_dict(path, allow_pickle=allow_pickle)
    except InvalidInputError as error:
        raise InvalidInputError(f"{error}; delete it to download {name} again") from error
    return _build(parsed, state, name)


def _hub_file(repo: str, path_in_repo: str, hint: str) -> Path:
    """Download (once) one file of a hub repo into the cache, mirroring the repo's folders."""
    owner, name = repo.split("/")
    subdir = Path("vqgan", f"{owner}--{name}", *Path(path_in_repo).parent.parts)
    return cached_download([f"hf://{repo}/{path_in_repo}"], Path(path_in_repo).name, subdir=str(subdir), hint=hint)


def _load_hub(spec: str, config: ConfigLike | None, allow_pickle: bool) -> VQGAN:
    """Load `hf://owner/repo` (taming layout: ckpts/last.ckpt + configs/model.yaml) or `hf://owner/repo/file`."""
    parts = spec.removeprefix("hf://").split("/")
    if len(parts) < 2 or not all(parts):
        raise InvalidInputError(f"malformed hub reference {spec!r}; use hf://owner/repo or hf://owner/repo/path/file")
    repo, inner = "/".join(parts[:2]), "/".join(parts[2:])
    hint = f"to use {spec} from files you have, {LOCAL_FILES_HINT}"
    if inner:
        return _load_file(_hub_file(repo, inner, hint), config, allow_pickle)
    checkpoint = _hub_file(repo, "ckpts/last.ckpt", hint)
    if config is None:
        config = _hub_file(repo, "configs/model.yaml", hint)
    return _load_file(checkpoint, config, allow_pickle)


def _looks_like_path(spec: str) -> bool:
    """Whether a string names a file rather than a registered model."""
    suffixes = {*TORCH_SUFFIXES, ".safetensors", ".yaml"}
    return "/" in spec or "\\" in spec or spec.startswith((".", "~")) or Path(spec).suffix in suffixes


def known_vqgan_names() -> list[str]:
    """Names `load_vqgan` accepts without a path: packaged models, then downloadable ones."""
    return [*BUILTIN_VQGANS, *KNOWN_VQGANS]


def _load_local(spec: str, config: ConfigLike | None, allow_pickle: bool) -> VQGAN:
    """Load from a local file or directory, telling a missing path apart from an unknown name."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return _load_directory(path, config, allow_pickle)
    if path.is_file():
        return _load_file(path, config, allow_pickle)
    if _looks_like_path(spec):
        raise ModelUnavailableError(f"VQGAN checkpoint not found: {path}; {LOCAL_FILES_HINT}")
    raise InvalidInputError(f"unknown VQGAN {spec!r}; known names: {', '.join(known_vqgan_names())}, "
                            "or a path to a checkpoint, a directory, or hf://owner/repo")


def load_vqgan(name_or_path: str | Path, *, config: ConfigLike | None = None,
               device: torch.device | str | None = None, allow_pickle: bool = False) -> VQGAN:
    """Load a frozen VQGAN from a known name, `hf://` repo, local checkpoint/directory, or safetensors file."""
    spec = str(name_or_path)
    if spec in BUILTIN_VQGANS:
        model = _load_file(BUILTIN_VQGANS[spec], config, allow_pickle=False)
    elif spec in KNOWN_VQGANS:
        model = _load_known(spec, config, allow_pickle)
    elif spec.startswith("hf://"):
        model = _load_hub(spec, config, allow_pickle)
    else:
        model = _load_local(spec, config, allow_pickle)
    return model if device is None else model.to(device)


def save_vqgan(model: VQGAN, path: str | Path) -> None:
    """Write a VQGAN to safetensors with its config in the metadata, so `load_vqgan(path)` needs nothing else."""
    save_state_dict(model.state_dict(), path, {CONFIG_METADATA_KEY: json.dumps(model.config.to_taming())})
