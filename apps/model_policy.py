"""Which models visitors of the web app may pick: the operator's lists, and free names only when allowed.

By default each registered pipeline offers its shipped model and the CLIP picker offers the shipped CLIPs
(`shapes-tiny`, preselected, and the bilingual `shapes-tiny-zh` for Chinese prompts); the
operator adds models per kind (a pipeline's registry name, or `clip`) with `--models`. With
`--allow-custom-models` a visitor may also type a hub-style name (`owner/name`, `hf:owner/name`,
`ViT-B-32:openai`) or the name of a file or folder inside `--model-dir`; a filesystem path anywhere else is
refused before anything is opened or loaded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from guidance.backends import CHECKPOINT_SUFFIXES
from guidance.clip_models import HUB_PREFIXES, parse_clip_spec
from guidance.errors import InvalidInputError
from pipelines.registry import get_pipeline_spec, pipeline_names

CLIP_KIND = "clip"
# The packaged CLIPs, so the app works without a download: the first is preselected; the second reads Chinese too.
SHIPPED_CLIPS = ("shapes-tiny", "shapes-tiny-zh")
# A hub-style name: an optional hub prefix, then NAME or OWNER/NAME of letters, digits, '.', '_' and '-'.
HUB_STYLE = re.compile(r"(hf-hub:|hf:|hf://)?[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def model_kinds() -> list[str]:
    """The kinds a model list names: each registered pipeline, then `clip`."""
    return [*pipeline_names(), CLIP_KIND]


def shipped_models() -> dict[str, list[str]]:
    """The models every app offers: each pipeline's shipped models and the shipped CLIPs."""
    return {**{name: list(get_pipeline_spec(name).offline_models) for name in pipeline_names()},
            CLIP_KIND: list(SHIPPED_CLIPS)}


def parse_model_entry(text: str, where: str) -> tuple[str, list[str]]:
    """`KIND=NAME[,NAME...]` as (kind, names), refused in one line naming `where` it came from."""
    kind, equals, names = text.partition("=")
    kind = kind.strip()
    listed = [name.strip() for name in names.split(",") if name.strip()]
    if not equals or not listed:
        raise InvalidInputError(f"{where}: {text.strip()!r} is not KIND=NAME[,NAME...], "
                                f"e.g. vqgan_clip=vqgan_imagenet_f16_16384")
    if kind not in model_kinds():
        raise InvalidInputError(f"{where}: unknown model kind {kind!r}; use one of {', '.join(model_kinds())}")
    return kind, listed


def read_model_lists(sources: Sequence[str]) -> dict[str, list[str]]:
    """The models named by `--models` values: each inline `KIND=NAME,...` or a file of such lines (# comments)."""
    lists: dict[str, list[str]] = {}
    for source in sources:
        if "=" in source:
            entries = [(source, "--models")]
        else:
            try:
                lines = Path(source).expanduser().read_text().splitlines()
            except (OSError, UnicodeDecodeError) as error:
                raise InvalidInputError(f"cannot read the model list {source} ({type(error).__name__}); "
                                        "give a text file of KIND=NAME[,NAME...] lines") from None
            entries = [(line.split("#")[0], f"{source} line {number}") for number, line in enumerate(lines, 1)
                       if line.split("#")[0].strip()]
        for text, where in entries:
            kind, names = parse_model_entry(text, where)
            lists.setdefault(kind, []).extend(names)
    return lists


def clip_key(spec: str) -> str:
    """A CLIP spec without its weight (`ViT-B-32:openai:0.5` -> `ViT-B-32:openai`): what an allow-list names."""
    name, pretrained, _ = parse_clip_spec(spec)
    return f"{name}:{pretrained}" if pretrained else name


@dataclass(frozen=True)
class ModelPolicy:
    """The models visitors may pick per kind, and whether (and where) they may name others."""

    allowed: Mapping[str, Sequence[str]] = field(default_factory=shipped_models)
    allow_custom: bool = False
    model_dir: Path | None = None  # free names may point at files and folders inside it (resolved, absolute)

    @classmethod
    def build(cls, extra: Mapping[str, Iterable[str]] | None = None, allow_custom: bool = False,
              model_dir: str | Path | None = None) -> ModelPolicy:
        """The shipped models plus the operator's `extra` lists; `model_dir` must be an existing folder."""
        allowed = shipped_models()
        for kind, names in (extra or {}).items():
            allowed[kind] = list(dict.fromkeys([*allowed.get(kind, []), *names]))
        folder = None
        if model_dir is not None:
            folder = Path(model_dir).expanduser().resolve()
            if not folder.is_dir():
                raise InvalidInputError(f"--model-dir {model_dir} is not a folder; create it or give another")
        return cls(allowed, allow_custom, folder)

    def choices(self, kind: str) -> list[str]:
        """The names offered in a kind's menu."""
        return list(self.allowed.get(kind, []))

    def check_model(self, kind: str, name: str, label: str) -> str:
        """The model to load for a visitor's choice of a pipeline's model (a listed name, or an allowed free
        name, with names inside --model-dir as absolute paths); anything else is refused in one line."""
        if name in self.choices(kind):
            return name
        return self._custom(name, label, kind)

    def check_clip(self, spec: str) -> str:
        """The CLIP spec to load for a visitor's `NAME[:PRETRAINED][:WEIGHT]`, checked as `check_model` does."""
        if clip_key(spec) in {clip_key(listed) for listed in self.choices(CLIP_KIND)}:
            return spec
        name, pretrained, weight = parse_clip_spec(spec)
        if not self.allow_custom:
            self._refuse(spec, "CLIP model", CLIP_KIND)
        fields = [self._custom(part, "CLIP model", CLIP_KIND, spec) for part in (name, pretrained) if part]
        if not pretrained and not name.startswith(HUB_PREFIXES) and self._inside_model_dir(name) is None:
            raise InvalidInputError(f"CLIP model {spec!r} names no weights, so it would be built with random ones "
                                    f"that guide nothing; name them, e.g. {name}:openai")
        return ":".join(fields) + (f":{weight:g}" if weight != 1 else "")

    def _custom(self, name: str, label: str, kind: str, shown: str | None = None) -> str:
        """An unlisted name, when free names are allowed: inside --model-dir, or hub-style and not a local path."""
        shown = shown or name
        if not self.allow_custom:
            self._refuse(shown, label, kind)
        inside = self._inside_model_dir(name)
        if inside is not None:
            return str(inside)
        if HUB_STYLE.fullmatch(name) and ".." not in name and not name.lower().endswith(CHECKPOINT_SUFFIXES) \
                and not Path(name).exists():
            return name
        where = f"a name inside {self.model_dir.name}/" if self.model_dir else "no local paths (no --model-dir)"
        raise InvalidInputError(f"{label} {shown!r} is refused: type a hub-style name such as owner/name or "
                                f"ViT-B-32:openai, or {where}")

    def _inside_model_dir(self, name: str) -> Path | None:
        """The file or folder `name` names inside --model-dir, or None (never a path outside it)."""
        if self.model_dir is None or not name or Path(name).is_absolute() or name.startswith("~"):
            return None
        candidate = (self.model_dir / name).resolve()
        if candidate == self.model_dir or not candidate.is_relative_to(self.model_dir) or not candidate.exists():
            return None
        return candidate

    def _refuse(self, name: str, label: str, kind: str) -> None:
        """Refuse an unlisted name in one line, naming what may be picked (nothing is opened or loaded)."""
        raise InvalidInputError(f"{label} {name!r} is not offered by this server; pick one of "
                                f"{', '.join(self.choices(kind)) or 'none'}, or ask its operator to add it")
