"""The fine-tuning flow end to end, as the README gives it: a RemoteCLIP-style `.pt` state dict plus its open_clip
architecture, fine-tuned on an image-caption CSV in a caption style it never saw (French shapes captions),
evaluated zero-shot before and after, and saved as a checkpoint that load_clip and the pipelines accept."""

from __future__ import annotations

import json
import re

import open_clip
import pytest
import torch

from guidance import load_clip
from pipelines import zero_shot
from training import shapes_world as world
from training import train_clip as tc


def figures(line: str) -> dict[str, float]:
    """The overall `csv_top*` figures of a printed metrics line."""
    return {name: float(value) for name, value in re.findall(r"(csv_top\d)=([0-9.]+)", line)}


@pytest.mark.slow  # about a minute on an idle core, several on a busy one
def test_finetuning_a_state_dict_on_french_captions_raises_french_zero_shot_accuracy(tmp_path, capsys):
    train_csv = world.write_dataset(tmp_path / "train", 96, seed=11, split="train", language="fr")
    eval_csv = world.write_dataset(tmp_path / "eval", 64, seed=12, split="all", language="fr", unnamed=False)
    start = load_clip("shapes-tiny")  # stands in for RemoteCLIP: a bare state dict and an architecture name
    torch.save({"state_dict": start.model.state_dict()}, tmp_path / "remote.pt")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "tiny-remote.json").write_text(json.dumps(start.config))
    open_clip.add_model_config(tmp_path / "configs")
    out = tmp_path / "tuned.safetensors"
    assert tc.main(["--csv", str(train_csv), "--image-column", "filepath", "--caption-column", "caption",
                    "--init", "tiny-remote", "--pretrained", str(tmp_path / "remote.pt"),
                    "--eval-csv", str(eval_csv), "--label-column", "label", "--template", "{}",
                    "--steps", "40", "--batch-size", "24", "--lr", "1e-3", "--warmup-steps", "4", "--seed", "0",
                    "--no-progress", "--threads", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    before = figures(next(line for line in printed.splitlines() if line.startswith("before:")))
    after = figures(next(line for line in printed.splitlines() if line.startswith("done")))
    assert before["csv_top1"] < 0.25 and after["csv_top1"] > before["csv_top1"] + 0.25, (before, after)
    assert after["csv_top5"] >= before["csv_top5"], (before, after)
    # The checkpoint loads by path everywhere a CLIP is taken, and evaluates as the trainer measured it.
    assert zero_shot.main(["--eval", str(eval_csv), "--label-column", "label", "--templates", "none",
                           "--clip-model", str(out), "--device", "cpu"]) == 0
    table = capsys.readouterr().out
    overall = next(line for line in table.splitlines() if line.startswith("(all)")).split()
    assert float(overall[2]) == pytest.approx(after["csv_top1"], abs=1e-3)


def test_a_transformers_clip_fine_tunes_and_saves_a_folder_that_load_clip_takes(tmp_path):
    """The same flow from a save_pretrained folder (tiny random CLIPModel): trains, evaluates before and after,
    and `--out FOLDER` writes a transformers folder."""
    import transformers_models as tiny_models  # tests/helpers

    folder = tiny_models.save_tiny_model("clip", tmp_path / "tiny")
    data = world.write_dataset(tmp_path / "data", 16, seed=1, split="train", image_size=32)
    result = tc.train(tc.TrainConfig(csv=str(data), model=str(folder), steps=3, batch_size=8, lr=1e-3, warmup_steps=1,
                                     progress=False, threads=1, eval_csv=str(data), eval_label_key="colour",
                                     out=str(tmp_path / "tuned")))
    assert len(result.losses) == 3 and "csv_top1" in result.before and "csv_top1" in result.metrics
    tuned = load_clip(str(tmp_path / "tuned"))
    torch.testing.assert_close(tuned.encode_text(["a red circle"]), result.clip.encode_text(["a red circle"]).cpu(),
                               atol=1e-3, rtol=1e-3)
