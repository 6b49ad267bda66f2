"""Many images in one run: output names, per-image recipes, batched latent optimisation, ranking, cutout batches."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from guidance import InvalidInputError, read_recipe
from pipelines.common import PipelineOutput, output_paths


def test_output_paths_one_is_the_output_several_are_numbered_from_1():
    assert output_paths("out/a.png", 1) == [Path("out/a.png")]
    assert output_paths(Path("out/a.png"), 3) == [Path("out/a-1.png"), Path("out/a-2.png"), Path("out/a-3.png")]
    with pytest.raises(InvalidInputError, match="must end in .png"):
        output_paths("a.jpg", 2)


def test_each_image_carries_its_own_recipe_entries(tmp_path):
    images = [Image.new("RGB", (4, 4)), Image.new("RGB", (4, 4), "red")]
    result = PipelineOutput(images, [], recipe={"prompt": "x", "seed": 5},
                            image_recipes=[{"index": 1}, {"index": 2, "seed": 6}])
    assert result.recipe_of(1) == {"prompt": "x", "seed": 6, "index": 2}
    result.save(tmp_path / "b.png", 1)
    assert read_recipe(tmp_path / "b.png")["index"] == 2 and read_recipe(tmp_path / "b.png")["seed"] == 6
