"""CLIP training: the loss, learning, checkpoint/resume, CSV input and its errors, the CLI, the shipped model."""

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch

from guidance import BUILTIN_CLIP_MODELS, load_clip
from guidance.errors import InvalidInputError
from training import core
from training import shapes_world as world
from training import train_clip as tc

MICRO = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 16, "width": 32, "layers": 1, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def micro_config(**overrides) -> tc.TrainConfig:
    base = dict(model_config=MICRO, steps=4, batch_size=8, lr=1e-3, warmup_steps=1, progress=False,
                eval_shapes=False, threads=1)
    return tc.TrainConfig(**{**base, **overrides})


def reference_loss(image: np.ndarray, text: np.ndarray, log_scale: float) -> float:
    """Symmetric cross-entropy of CLIP's pseudo-code, in float64 numpy."""
    logits = min(math.exp(log_scale), 100.0) * image @ text.T

    def cross_entropy(rows: np.ndarray) -> float:
        rows = rows - rows.max(1, keepdims=True)
        log_probs = rows - np.log(np.exp(rows).sum(1, keepdims=True))
        return -np.mean(np.diag(log_probs))

    return (cross_entropy(logits) + cross_entropy(logits.T)) / 2


@pytest.mark.parametrize("log_scale", [math.log(1 / 0.07), math.log(500.0)])
def test_contrastive_loss_matches_float64_reference(log_scale):
    gen = torch.Generator().manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(6, 16, generator=gen), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(6, 16, generator=gen), dim=-1)
    loss = tc.contrastive_loss(image, text, torch.tensor(log_scale))
    expected = reference_loss(image.double().numpy(), text.double().numpy(), log_scale)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


@pytest.fixture(scope="module")
def shapes_csv(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shapes_csv")
    return world.write_dataset(folder, 8, seed=5, split="all", image_size=32)


def test_training_on_a_csv_reduces_the_loss(shapes_csv, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # relative image paths must resolve against the CSV's folder, not the cwd
    result = tc.train(micro_config(csv=str(shapes_csv), steps=25, lr=3e-3, eval_csv=str(shapes_csv),
                                   eval_label_key="colour", templates=("a {} shape",)))
    assert len(result.losses) == 25
    assert np.mean(result.losses[-5:]) < 0.7 * result.losses[0]
    assert 0.0 <= result.metrics["csv_top1"] <= 1.0


def interrupted(monkeypatch, config: tc.TrainConfig, steps: int) -> None:
    """Run `config` until `steps` steps are done, then stop it as a crash would (its checkpoints stay)."""
    step_once, taken = tc.train_step, []

    def crash_after(*args):
        if len(taken) == steps:
            raise KeyboardInterrupt
        taken.append(1)
        return step_once(*args)

    monkeypatch.setattr(tc, "train_step", crash_after)
    with pytest.raises(KeyboardInterrupt):
        tc.train(config)
    monkeypatch.setattr(tc, "train_step", step_once)


def test_resume_reproduces_an_uninterrupted_run(tmp_path, monkeypatch):
    full = tc.train(micro_config(shapes=True, checkpoint_dir=str(tmp_path / "a"), checkpoint_every=2))
    interrupted(monkeypatch, micro_config(shapes=True, checkpoint_dir=str(tmp_path / "c"), checkpoint_every=2), 3)
    assert [path.name for path in (tmp_path / "c").iterdir()] == ["step-00000002"]
    resumed = tc.train(micro_config(shapes=True, checkpoint_dir=str(tmp_path / "b"),
                                    resume=str(tmp_path / "c" / "step-00000002")))
    assert resumed.losses == full.losses[2:]
    for key, value in full.clip.model.state_dict().items():
        assert torch.equal(value, resumed.clip.model.state_dict()[key]), key
    state_a = torch.load(tmp_path / "a" / "step-00000004" / "state.pt", weights_only=True)
    state_b = torch.load(tmp_path / "b" / "step-00000004" / "state.pt", weights_only=True)
    assert state_a["step"] == state_b["step"] == 4
    for index, moments in state_a["optimizer"]["state"].items():
        assert torch.equal(moments["exp_avg_sq"], state_b["optimizer"]["state"][index]["exp_avg_sq"])
    assert state_a["schedule"] == state_b["schedule"]
    assert core.find_checkpoint(tmp_path / "a").name == "step-00000004"
    assert [path.name for path in (tmp_path / "a").iterdir()] == ["step-00000004"], "older checkpoints are dropped"
    resumed_from_dir = tc.train(micro_config(shapes=True, resume=str(tmp_path / "c")))
    assert resumed_from_dir.losses == full.losses[2:], "--resume DIR continues from its latest checkpoint"


def test_resume_from_a_folder_without_checkpoints_is_one_line(tmp_path):
    with pytest.raises(InvalidInputError, match="no checkpoint in") as info:
        tc.train(micro_config(shapes=True, resume=str(tmp_path)))
    assert "\n" not in str(info.value)


def test_augmented_training_resumes_exactly(tmp_path, monkeypatch):
    config = dict(shapes=True, augment="geometric")
    full = tc.train(micro_config(**config))
    interrupted(monkeypatch, micro_config(**config, checkpoint_dir=str(tmp_path / "a"), checkpoint_every=2), 2)
    resumed = tc.train(micro_config(**config, resume=str(tmp_path / "a" / "step-00000002")))
    plain = tc.train(micro_config(shapes=True))
    assert resumed.losses == full.losses[2:]
    assert full.losses != plain.losses, "augmentation changes what the model sees"


def test_a_step_with_a_non_finite_gradient_is_skipped():
    clip = tc.build_model(micro_config(shapes=True))
    clip.model.train().requires_grad_(True)
    optimisation = tc.build_optimisation(clip, micro_config(warmup_steps=0, lr=1e-3, grad_clip=1.0))
    optimizer = optimisation.optimizer
    before = {k: v.clone() for k, v in clip.model.state_dict().items()}
    position = optimisation.schedule.last_epoch
    images = torch.rand(4, 3, 32, 32)
    images[0, 0, 0, 0] = float("nan")
    loss = tc.train_step(clip, optimisation, images, ["a red circle", "a blue square", "a star", "a green shape"])
    assert math.isnan(loss)
    assert all(torch.equal(before[k], v) for k, v in clip.model.state_dict().items())
    assert not optimizer.state, "the optimiser's moments stay untouched"
    assert optimisation.schedule.last_epoch == position + 1, "the schedule still advances past the skipped step"
    loss = tc.train_step(clip, optimisation, images.nan_to_num(0.5), ["a red circle", "a blue square", "a star",
                                                                      "a green shape"])
    assert math.isfinite(loss) and any(not torch.equal(before[k], v) for k, v in clip.model.state_dict().items())


def test_saved_weights_load_back(tmp_path):
    result = tc.train(micro_config(shapes=True, steps=1, out=str(tmp_path / "m.safetensors"), fp16=True))
    clip = load_clip(str(tmp_path / "m.safetensors"))
    images = torch.rand(2, 3, 32, 32)
    expected = result.clip.encode_image(images)
    assert torch.allclose(clip.encode_image(images), expected, atol=2e-2)
    assert clip.context_length == 16


def test_evaluate_shapes_reports_accuracies():
    clip = tc.build_model(micro_config(shapes=True))
    metrics = tc.evaluate_shapes(clip, count=8)
    assert set(metrics) >= {"colour_acc", "shape_acc", "pair_acc"}
    assert all(0.0 <= v <= 1.0 for v in metrics.values())


def test_csv_missing_column_is_one_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("filepath,text\nimages/a.png,a red circle\n")
    with pytest.raises(InvalidInputError, match="no column 'caption'") as info:
        tc.train(micro_config(csv=str(path)))
    assert "\n" not in str(info.value)


def test_csv_missing_or_unreadable_image_is_one_line(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    missing = tmp_path / "missing.csv"
    missing.write_text("filepath,caption\nnowhere.png,a red circle\nbroken.png,a blue star\n")
    with pytest.raises(InvalidInputError, match="not found") as info:
        tc.CaptionCSV(missing)
    assert "\n" not in str(info.value)
    unreadable = tmp_path / "unreadable.csv"
    unreadable.write_text("filepath,caption\nbroken.png,a blue star\nbroken.png,a red star\n")
    with pytest.raises(InvalidInputError, match="cannot read image") as info:
        tc.train(micro_config(csv=str(unreadable), batch_size=2))
    assert "\n" not in str(info.value)


def test_cli_help_and_one_line_errors(capsys):
    with pytest.raises(SystemExit) as info:
        tc.main(["--help"])
    assert info.value.code == 0 and "--resume" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:  # the trainers' shared error exit: status 2, one line
        tc.main(["--steps", "1"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "--shapes" in err and "\n" not in err


def test_shipped_shapes_model_names_unseen_combinations():
    path = BUILTIN_CLIP_MODELS["shapes-tiny"]
    assert path.stat().st_size <= 10 * 1024 * 1024
    metrics = tc.evaluate_shapes(load_clip("shapes-tiny"), count=256)
    assert metrics["colour_acc"] >= 0.95 and metrics["shape_acc"] >= 0.90


def test_lock_image_trains_only_the_text_side_and_keeps_batch_norm_statistics():
    """LiT: with --lock-image every image-tower tensor (weights and the ResNet's running statistics) stays as it
    was, mid-run evaluations included, while the text tower learns."""
    config = micro_config(model_config=None, shapes=True, steps=3, batch_size=4, eval_every=2, eval_count=4)
    start = tc.build_model(tc.TrainConfig(**{**config.__dict__}))
    result = tc.train(dataclasses.replace(config, lock_image=True))
    before, after = start.model.state_dict(), result.clip.model.state_dict()
    visual = [key for key in before if key.startswith("visual.")]
    assert any("running_mean" in key for key in visual)
    assert all(torch.equal(before[key], after[key]) for key in visual)
    assert not torch.equal(before["token_embedding.weight"], after["token_embedding.weight"])


def test_lock_english_teaches_chinese_and_keeps_every_english_and_image_embedding_bit_for_bit():
    """--lock-english: only the embeddings of tokens ASCII text never produces learn, so the image tower and every
    English text embed exactly as before, while Chinese texts move."""
    config = micro_config(model_config=None, model="shapes-tiny", shapes=True, chinese_share=0.5, steps=3,
                          batch_size=4, lr=1e-2, lock_english=True, eval_every=2, eval_count=4)
    start = copy.deepcopy(tc.build_model(config))  # a copy: load_clip may hand the trainer the same object
    result = tc.train(config)
    before, after = start.model.state_dict(), result.clip.model.state_dict()
    learnt = tc.english_free_tokens(start)
    changed = [key for key in before if not torch.equal(before[key], after[key])]
    assert changed == ["token_embedding.weight"]
    rows_changed = (before["token_embedding.weight"] != after["token_embedding.weight"]).any(dim=1).nonzero().flatten()
    assert len(rows_changed) > 0 and set(rows_changed.tolist()) <= set(learnt.tolist())
    assert not any(token in learnt for token in start.tokenize(["a red circle on the left, 'quoted' & 7!"])[0])
    with torch.no_grad():
        english = ["a red circle", "a photo of a blue square on the right."]
        assert torch.equal(start.encode_text(english), result.clip.encode_text(english))
        assert not torch.equal(start.encode_text(["红色的圆"]), result.clip.encode_text(["红色的圆"]))


def test_lock_english_refuses_a_new_model_in_one_line():
    with pytest.raises(InvalidInputError, match="--lock-english teaches a trained English model"):
        tc.train(micro_config(lock_english=True, shapes=True))


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_a_transformers_model_fine_tunes_checkpoints_resumes_and_saves(tmp_path, kind):
    """A save_pretrained folder fine-tunes like an open_clip model: its checkpoints hold a save_pretrained folder,
    a resumed run continues from them, and --out is a folder that load_clip reads back."""
    import transformers_models as tiny_models  # tests/helpers

    folder = tiny_models.save_tiny_model(kind, tmp_path / kind)
    config = micro_config(model_config=None, model=str(folder), shapes=True, steps=2, batch_size=4,
                          checkpoint_dir=str(tmp_path / "runs"), checkpoint_every=1, out=str(tmp_path / "tuned"))
    tc.train(config)
    checkpoint = core.find_checkpoint(tmp_path / "runs")
    assert (checkpoint / "model" / "config.json").is_file() and not (checkpoint / core.WEIGHTS_FILE).exists()
    resumed = tc.train(dataclasses.replace(config, steps=3, resume=str(tmp_path / "runs"), out=None))
    assert len(resumed.losses) == 1
    tuned = load_clip(str(tmp_path / "tuned"))
    assert type(tuned).__name__ == "TransformersCLIPEncoder"
    assert tuned.encode_text(["a red circle"]).shape == (1, tuned.embed_dim)


def test_bf16_mixed_precision_trains_with_the_fp32_loss_and_fp16_on_the_cpu_is_refused():
    """bf16 autocast around the encoders: the first loss is fp32's within bf16's precision, and the run
    learns; fp16 needs a GPU's loss scaler, refused in one line on the CPU."""
    config = micro_config(shapes=True, steps=6, batch_size=8, lr=3e-3)
    full, mixed = tc.train(config), tc.train(dataclasses.replace(config, mixed_precision="bf16"))
    assert mixed.losses[0] == pytest.approx(full.losses[0], rel=2e-2)
    assert all(math.isfinite(loss) for loss in mixed.losses) and mixed.losses[-1] < mixed.losses[0]
    with pytest.raises(InvalidInputError, match="fp16 needs a CUDA GPU"):
        tc.train(dataclasses.replace(config, mixed_precision="fp16"))
