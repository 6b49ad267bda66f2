"""Prompt templates for zero-shot labels and text directions: the CLIP paper's English ImageNet set, a Chinese
set, none, or a file; picked by name, or automatically by the language of the texts."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Iterable, Sequence, Union

import open_clip

from .errors import InvalidInputError

Template = Union[str, Callable[[str], str]]

# The 80 prompt templates of the CLIP paper's ImageNet zero-shot evaluation.
IMAGENET_TEMPLATES: tuple[Template, ...] = tuple(open_clip.OPENAI_IMAGENET_TEMPLATES)

# The same idea in Chinese (after Chinese-CLIP's zero-shot templates): photos, renderings and drawings of the label.
CHINESE_TEMPLATES: tuple[str, ...] = (
    "{}。", "一张{}的照片。", "{}的照片。", "一张{}的图片。", "{}的图片。", "一幅{}的画。", "{}的画。",
    "一张模糊的{}的照片。", "一张清晰的{}的照片。", "一张{}的特写照片。", "一张明亮的{}的照片。",
    "一张昏暗的{}的照片。", "一张低分辨率的{}的照片。", "一张质量很差的{}的照片。", "一张好看的{}的照片。",
    "一张大的{}的照片。", "一张小的{}的照片。", "一张裁剪过的{}的照片。", "一张{}的素描。", "一幅{}的卡通画。",
    "一幅{}的涂鸦。", "一个{}的渲染图。", "一个{}的3D模型。", "这是一张{}的照片。", "这是{}。", "图中是{}。",
    "一张黑白的{}的照片。", "一幅{}的油画。", "一个{}的图案。", "一个{}的标志。",
)

TEMPLATE_SETS: dict[str, tuple[Template, ...]] = {
    "imagenet": IMAGENET_TEMPLATES,
    "zh": CHINESE_TEMPLATES,
    "none": ("{}",),
}

# CJK ideographs (with extension A and the compatibility block), kana and hangul: text CLIP's English set does not fit.
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")


def contains_cjk(text: str) -> bool:
    """Whether a text has Chinese, Japanese or Korean characters."""
    return bool(_CJK.search(text))


def fill(template: Template, text: str) -> str:
    """A template (a '{}' format string or a callable) with the text put in."""
    return template(text) if callable(template) else template.format(text)


def read_templates(path: str | Path) -> tuple[str, ...]:
    """Templates from a UTF-8 file, one per line with '{}' where the label goes; blank lines and '#' lines skipped."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidInputError(f"cannot read templates file {path} ({type(error).__name__}); give a UTF-8 text file "
                                "with one template such as 'a photo of a {}.' per line") from None
    templates = tuple(line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#"))
    bad = next((line for line in templates if line.count("{}") != 1 or "{" in line.replace("{}", "")), None)
    if not templates or bad is not None:
        raise InvalidInputError(f"templates file {path}: {'no templates' if not templates else repr(bad)}; write one "
                                "template per line with exactly one '{}' where the label goes")
    return templates


def choose_templates(texts: Iterable[str], templates: str | Sequence[Template] = "auto") -> tuple[Template, ...]:
    """Resolve templates for texts: a set's name ('imagenet', 'zh', 'none'), 'auto' (Chinese if any text has CJK
    characters, else ImageNet's English set), a file of templates, or a sequence of templates as given."""
    if not isinstance(templates, str):
        templates = tuple(templates)
        if not templates:
            raise InvalidInputError("no templates given; e.g. ['a photo of a {}.'], or 'none' to use the texts as they are")
        return templates
    if templates == "auto":
        return CHINESE_TEMPLATES if any(contains_cjk(text) for text in texts) else IMAGENET_TEMPLATES
    if templates in TEMPLATE_SETS:
        return TEMPLATE_SETS[templates]
    if Path(templates).is_file():
        return read_templates(templates)
    raise InvalidInputError(f"unknown templates {templates!r}; choose auto, {', '.join(TEMPLATE_SETS)} or a file "
                            "with one template per line")
