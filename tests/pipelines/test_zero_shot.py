"""pipelines.zero_shot on the shipped shapes-tiny CLIP and rendered shapes: classification, retrieval, evaluation."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from PIL import Image

from guidance import load_clip
from pipelines.common import run_cli
from pipelines.zero_shot import classify, collect_images, evaluate, main, rank
from training.shapes_world import COLOURS, colour_labels, render_canonical

SHAPES_CLIP = ["--clip-model", "shapes-tiny", "--device", "cpu"]


@pytest.fixture(scope="module")
def clip():
    return load_clip("shapes-tiny")


def render(text: str, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(render_canonical(text)).save(path)
    return path


@pytest.fixture(scope="module")
def circles(tmp_path_factory) -> list[Path]:
    """One large centred circle per colour, in a nested folder."""
    root = tmp_path_factory.mktemp("circles")
    return [render(f"a {colour} circle", root / "nested" / f"{colour}.png") for colour in COLOURS]


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    """A labelled folder: one subfolder per colour with a circle and a square."""
    root = tmp_path_factory.mktemp("labelled")
    for colour in COLOURS:
        for shape in ("circle", "square"):
            render(f"a {colour} {shape}", root / colour / f"{shape}.png")
    return root


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_folders_are_walked_for_images(circles):
    assert sorted(collect_images([circles[0].parent.parent])) == sorted(circles)


def test_zero_shot_picks_the_right_colour(clip, circles):
    labels = colour_labels()
    probabilities = classify(clip, circles, labels, templates="none")
    assert probabilities.shape == (len(COLOURS), len(labels))
    assert probabilities.argmax(1).tolist() == list(range(len(COLOURS)))


def test_cli_prints_and_writes_the_probability_table(circles, tmp_path, capsys):
    out = tmp_path / "table.csv"
    labels = ",".join(colour_labels())
    assert main([str(circles[0].parent), "--labels", labels, "--templates", "none", "--csv", str(out), *SHAPES_CLIP]) == 0
    rows = read_csv(out)
    assert [Path(row["image"]).stem for row in rows] == sorted(COLOURS)  # walked in sorted order
    assert all(row["best"] == f"a {Path(row['image']).stem} shape".replace("a orange", "an orange") for row in rows)
    assert all(abs(sum(float(row[label]) for label in colour_labels()) - 1) < 1e-3 for row in rows)
    assert "best" in capsys.readouterr().out


def test_labels_file_and_template_file(circles, tmp_path, capsys):
    (tmp_path / "labels.txt").write_text("# colours\nred\nblue\n", encoding="utf-8")
    (tmp_path / "templates.txt").write_text("a {} shape\na photo of a {} shape\n", encoding="utf-8")
    red, blue = circles[0], circles[2]
    assert main([str(red), str(blue), "--labels-file", str(tmp_path / "labels.txt"),
                 "--templates", str(tmp_path / "templates.txt"), *SHAPES_CLIP]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    assert lines[0].endswith("red") and lines[1].endswith("blue")


def test_query_ranks_the_matching_image_first(clip, circles, tmp_path):
    square = render("a blue square", tmp_path / "square.png")
    matches = rank(clip, [*circles, square], "a blue square")
    assert matches[0].path == square and matches[0].probability is None
    assert [m.similarity for m in matches] == sorted((m.similarity for m in matches), reverse=True)
    out = tmp_path / "ranking.csv"
    assert main([*map(str, circles), str(square), "--query", "a yellow circle", "--csv", str(out), *SHAPES_CLIP]) == 0
    assert Path(read_csv(out)[0]["image"]).stem == "yellow"


def test_evaluation_on_a_labelled_folder_gives_per_class_accuracy(clip, labelled):
    result = evaluate(clip, labelled, templates="none")
    assert result.classes == sorted(COLOURS) and result.counts == [2] * len(COLOURS) and result.k == 5
    assert result.overall_top1 >= 0.9 and result.overall_topk >= result.overall_top1
    assert all(topk >= top1 for top1, topk in zip(result.top1, result.topk))


def test_evaluation_cli_on_a_csv(labelled, tmp_path, capsys):
    table = tmp_path / "labels.csv"
    with open(table, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filepath", "colour"])
        for colour in COLOURS:
            writer.writerow([str(labelled / colour / "circle.png"), f"{colour} shape"])
    out = tmp_path / "accuracy.csv"
    assert main(["--eval", str(table), "--label-column", "colour", "--templates", "none", "--csv", str(out),
                 *SHAPES_CLIP]) == 0
    rows = read_csv(out)
    assert [row["class"] for row in rows] == sorted(f"{c} shape" for c in COLOURS) + ["(all)"]
    assert float(rows[-1]["top1"]) >= 0.85 and rows[-1]["images"] == "8"


@pytest.mark.parametrize("args, message", [
    (["--labels", "red,blue"], "give image files or folders"),
    (["missing.png", "--labels", "red,blue"], "no such image file or folder: missing.png"),
    (["IMG", "--labels", "red"], "at least two non-empty labels"),
    (["IMG", "--labels", "red,red"], "given twice: red"),
    (["IMG", "--labels", "red,blue", "--templates", "klingon"], "unknown templates 'klingon'"),
    (["IMG", "--query", " "], "the query is empty"),
    (["IMG", "--eval", "EVAL"], "--eval reads its images"),
    (["--eval", "nowhere"], "no such labelled folder or CSV"),
    (["--eval", "CSV", "--label-column", "species"], "has no column 'species'"),
    (["IMG", "--labels", "a,b", "--clip-model", "shapes-tiny:2"], "a weight is for ensembles"),
])
def test_bad_input_exits_2_with_one_line(circles, labelled, tmp_path, capsys, args, message):
    table = tmp_path / "labels.csv"
    table.write_text("filepath,label\nx.png,cat\n", encoding="utf-8")
    replace = {"IMG": str(circles[0]), "EVAL": str(labelled), "CSV": str(table)}
    args = [replace.get(arg, arg) for arg in args]
    if "--clip-model" not in args:
        args += SHAPES_CLIP
    assert run_cli(main, args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err
