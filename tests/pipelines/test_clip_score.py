"""pipelines.clip_score on the shipped shapes-tiny CLIP: scores against each PNG's recipe prompt, the judge warning."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from PIL import Image

from guidance import clip_score, load_clip, load_image, save_png
from pipelines.clip_score import main, score_images
from pipelines.common import run_cli
from training.shapes_world import render_canonical

SHAPES_CLIP = ["--clip-model", "shapes-tiny", "--device", "cpu"]


@pytest.fixture(scope="module")
def judge():
    return load_clip("shapes-tiny")


def generated(path: Path, scene: str, prompt: str, clip_models: list[str]) -> Path:
    """A PNG with a recipe as the pipelines write it (the image is a rendered scene)."""
    return save_png(Image.fromarray(render_canonical(scene)), path, {"prompt": prompt, "clip_models": clip_models})


def test_score_reads_the_recipe_prompt_and_matches_clip_score(judge, tmp_path):
    red = generated(tmp_path / "red.png", "a red circle", "a red circle", ["ViT-B-32:openai:1"])
    blue = generated(tmp_path / "blue.png", "a blue square", "a red circle", ["ViT-B-32:openai:1"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the judge guided neither image: no warning
        scores = score_images(judge, [red, blue])
    assert [s.prompt for s in scores] == ["a red circle"] * 2 and not any(s.guided_by_judge for s in scores)
    expected = clip_score(judge, load_image(red), ["a red circle"])
    assert scores[0].score == pytest.approx(float(expected), abs=1e-4)
    assert scores[0].score > scores[1].score + 10  # the red circle matches its prompt, the blue square does not


def test_weighted_prompts_score_against_their_positive_parts(judge, tmp_path):
    path = generated(tmp_path / "mix.png", "a red circle", "a red circle:3 | a blue square:1 | a star:-1", [])
    image = load_image(path)
    parts = clip_score(judge, image.expand(2, -1, -1, -1), ["a red circle", "a blue square"])
    assert score_images(judge, [path])[0].score == pytest.approx(float((3 * parts[0] + parts[1]) / 4), abs=1e-4)


def test_cli_warns_when_the_judge_guided_the_image(tmp_path, capsys):
    path = generated(tmp_path / "red.png", "a red circle", "a red circle", ["shapes-tiny:1"])
    out = tmp_path / "scores.csv"
    assert main([str(tmp_path), "--csv", str(out), *SHAPES_CLIP]) == 0
    captured = capsys.readouterr()
    assert "warning:" in captured.err and "guided by shapes-tiny, the judge" in captured.err
    assert str(path) in captured.out and "yes" in out.read_text()


def test_prompt_option_scores_images_without_a_recipe(tmp_path, capsys):
    path = tmp_path / "plain.png"
    Image.fromarray(render_canonical("a green star")).save(path)
    assert main([str(path), "--prompt", "a green star", *SHAPES_CLIP]) == 0
    row = capsys.readouterr().out.splitlines()[1].split()
    assert row[0] == str(path) and float(row[1]) > 0 and row[2] == "no"


@pytest.mark.parametrize("recipe, message", [
    (None, "carries no recipe"),
    ({"clip_models": []}, "holds no prompt; give one with --prompt"),
    ({"prompt": "a star:-1"}, "no positive part"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, recipe, message):
    path = tmp_path / "image.png"
    image = Image.fromarray(render_canonical("a red circle"))
    save_png(image, path, recipe) if recipe is not None else image.save(path)
    assert run_cli(main, [str(path), *SHAPES_CLIP]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err


@pytest.mark.slow
def test_scores_an_image_generated_by_a_pipeline(tmp_path, capsys):
    from pipelines.pixels_clip import main as pixels_main

    output = tmp_path / "red.png"
    assert pixels_main(["a red circle", "--clip-model", "shapes-tiny", "--size", "32", "--steps", "3", "--cutn", "2",
                        "--seed", "1", "--device", "cpu", "-o", str(output)]) == 0
    capsys.readouterr()
    assert main([str(output), *SHAPES_CLIP]) == 0
    captured = capsys.readouterr()
    assert "guided by shapes-tiny" in captured.err and "a red circle" in captured.out
