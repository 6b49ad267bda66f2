"""VQGAN architecture settings, read from taming-transformers' YAML/dict layout."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from guidance.errors import InvalidInputError, ModelUnavailableError

VQ_TARGET = "taming.models.vqgan.VQModel"
GUMBEL_TARGET = "taming.models.vqgan.GumbelVQ"
_TARGET_KINDS = {"VQModel": False, "VQNoDiscModel": False, "GumbelVQ": True}
_REQUIRED_DDCONFIG = ("ch", "out_ch", "ch_mult", "num_res_blocks", "attn_resolutions", "in_channels", "resolution",
                      "z_channels")


@dataclass(frozen=True, eq=False)
class VQGANConfig:
    """What a VQGAN is built from: codebook size and width, quantizer kind, and taming's `ddconfig`."""

    embed_dim: int
    n_embed: int
    ddconfig: dict[str, Any]
    gumbel: bool = False

    @property
    def factor(self) -> int:
        """Downsampling factor between image pixels and latent positions."""
        return 2 ** (len(self.ddconfig["ch_mult"]) - 1)

    def to_taming(self) -> dict[str, Any]:
        """The config in taming's `{"model": {"target", "params"}}` layout."""
        params = {"embed_dim": self.embed_dim, "n_embed": self.n_embed, "ddconfig": dict(self.ddconfig)}
        return {"model": {"target": GUMBEL_TARGET if self.gumbel else VQ_TARGET, "params": params}}


def read_yaml(path: str | Path) -> Mapping[str, Any]:
    """Parse a taming YAML config file into a mapping."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelUnavailableError(
            f"VQGAN config not found: {path}; pass the model.yaml that came with the checkpoint (--vqgan-config)")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise InvalidInputError(f"cannot parse VQGAN config {path}: {str(error).splitlines()[0]}") from error
    if not isinstance(loaded, Mapping):
        raise InvalidInputError(f"VQGAN config {path} is not a YAML mapping; pass taming's model.yaml")
    return loaded


def _is_gumbel(target: Any, params: Mapping[str, Any]) -> bool:
    """Whether a taming target names GumbelVQ (without a target: whether Gumbel-only settings are present)."""
    if target is None:
        return "temperature_scheduler_config" in params
    kind = str(target).rsplit(".", 1)[-1]
    if kind not in _TARGET_KINDS:
        raise InvalidInputError(f"unsupported VQGAN target {target!r}; supported: {', '.join(_TARGET_KINDS)}")
    return _TARGET_KINDS[kind]


def _plain(value: Any) -> Any:
    """YAML/JSON-friendly copy of a ddconfig value (tuples become lists)."""
    return list(value) if isinstance(value, Sequence) and not isinstance(value, str) else value


def parse_config(config: str | Path | Mapping[str, Any]) -> VQGANConfig:
    """Read a taming config (YAML path, full `{"model": ...}` dict, or just its `params`) into a `VQGANConfig`."""
    mapping = read_yaml(config) if isinstance(config, (str, Path)) else config
    section = mapping["model"] if isinstance(mapping.get("model"), Mapping) else mapping
    params = section["params"] if isinstance(section.get("params"), Mapping) else section
    ddconfig = params.get("ddconfig")
    missing = [key for key in ("embed_dim", "n_embed") if key not in params]
    ddkeys = ddconfig.keys() if isinstance(ddconfig, Mapping) else set()
    missing += [f"ddconfig.{key}" for key in _REQUIRED_DDCONFIG if key not in ddkeys]
    if missing:
        raise InvalidInputError(f"VQGAN config lacks {', '.join(missing)}; pass taming's model.yaml (model.params)")
    target = section.get("target", params.get("target"))
    return VQGANConfig(embed_dim=int(params["embed_dim"]), n_embed=int(params["n_embed"]),
                       ddconfig={key: _plain(value) for key, value in ddconfig.items()},
                       gumbel=_is_gumbel(target, params))


def taming_config(*, gumbel: bool, ch: int, ch_mult: Sequence[int], num_res_blocks: int,
                  attn_resolutions: Sequence[int], z_channels: int, embed_dim: int, n_embed: int,
                  resolution: int) -> dict[str, Any]:
    """A config dict in taming's layout (RGB in and out, no dropout, single z)."""
    ddconfig = {"double_z": False, "z_channels": z_channels, "resolution": resolution, "in_channels": 3, "out_ch": 3,
                "ch": ch, "ch_mult": list(ch_mult), "num_res_blocks": num_res_blocks,
                "attn_resolutions": list(attn_resolutions), "dropout": 0.0}
    params = {"embed_dim": embed_dim, "n_embed": n_embed, "ddconfig": ddconfig}
    return {"model": {"target": GUMBEL_TARGET if gumbel else VQ_TARGET, "params": params}}


def tiny_vqgan_config(*, gumbel: bool = False, ch: int = 32, ch_mult: Sequence[int] = (1, 2), num_res_blocks: int = 1,
                      attn_resolutions: Sequence[int] = (), z_channels: int = 16, embed_dim: int = 16,
                      n_embed: int = 64, resolution: int = 64) -> dict[str, Any]:
    """A small taming-style config for tests and toy models (widths must be multiples of 32 for GroupNorm)."""
    return taming_config(gumbel=gumbel, ch=ch, ch_mult=ch_mult, num_res_blocks=num_res_blocks,
                         attn_resolutions=attn_resolutions, z_channels=z_channels, embed_dim=embed_dim,
                         n_embed=n_embed, resolution=resolution)
