"""Template sets, the automatic choice by language, template files, and zero-shot with Chinese labels."""

from __future__ import annotations

import pytest
import torch

from guidance import CHINESE_TEMPLATES, IMAGENET_TEMPLATES, InvalidInputError, choose_templates, zero_shot_classify
from guidance.templates import contains_cjk, fill


def test_chinese_set_has_one_slot_per_template_and_reads_naturally():
    assert len(CHINESE_TEMPLATES) >= 20 and len(set(CHINESE_TEMPLATES)) == len(CHINESE_TEMPLATES)
    assert all(template.count("{}") == 1 for template in CHINESE_TEMPLATES)
    assert all(contains_cjk(template) for template in CHINESE_TEMPLATES if template != "{}。")
    assert fill("一张{}的照片。", "红色的圆形") == "一张红色的圆形的照片。"
    assert fill(IMAGENET_TEMPLATES[0], "dog") == "a bad photo of a dog."


@pytest.mark.parametrize("texts, expected", [
    (["a red circle", "a blue square"], IMAGENET_TEMPLATES),
    (["a red circle", "蓝色的正方形"], CHINESE_TEMPLATES),  # any Chinese text picks the Chinese set
    (["赤い丸"], CHINESE_TEMPLATES),
    (["café 10:30"], IMAGENET_TEMPLATES),
])
def test_auto_picks_the_set_by_language(texts, expected):
    assert choose_templates(texts) == expected


def test_named_sets_sequences_and_files(tmp_path):
    assert choose_templates(["a dog"], "zh") == CHINESE_TEMPLATES
    assert choose_templates(["一只狗"], "imagenet") == IMAGENET_TEMPLATES
    assert choose_templates(["一只狗"], "none") == ("{}",)
    assert choose_templates(["x"], ["a {}", "the {}"]) == ("a {}", "the {}")
    path = tmp_path / "templates.txt"
    path.write_text("# satellite images\na satellite photo of {}.\n\n一张{}的卫星照片。\n", encoding="utf-8")
    assert choose_templates(["x"], str(path)) == ("a satellite photo of {}.", "一张{}的卫星照片。")


@pytest.mark.parametrize("content, hint", [
    ("a photo of a dog\n", "exactly one '{}'"),
    ("{} and {}\n", "exactly one '{}'"),
    ("# only a comment\n", "no templates"),
])
def test_bad_template_files_are_refused_in_one_line(tmp_path, content, hint):
    path = tmp_path / "templates.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InvalidInputError, match=hint) as caught:
        choose_templates(["x"], str(path))
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("templates, hint", [("klingon", "unknown templates 'klingon'"), ([], "no templates given")])
def test_unknown_or_empty_templates_are_refused_in_one_line(templates, hint):
    with pytest.raises(InvalidInputError, match=hint):
        choose_templates(["x"], templates)


@pytest.mark.filterwarnings("ignore:text truncated")  # the tiny CLIP's 16-token context
def test_zero_shot_with_chinese_labels_uses_the_chinese_templates(tiny_clip):
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    labels = ["红色的圆形", "蓝色的正方形"]
    automatic = zero_shot_classify(tiny_clip, images, labels)
    torch.testing.assert_close(automatic, zero_shot_classify(tiny_clip, images, labels, templates=CHINESE_TEMPLATES))
    assert not torch.allclose(automatic, zero_shot_classify(tiny_clip, images, labels, templates="imagenet"))
