"""Training the shapes VQ autoencoder: losses, dead-code restarts, exact resume, export, CLI, and the shipped model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import training.train_vqgan as tv
from generators.vqgan import BUILTIN_VQGANS, known_vqgan_names, load_vqgan, tiny_vqgan_config
from guidance.errors import InvalidInputError

# 16x16 images, no downsampling, 16 codes: a few milliseconds per step.
MICRO_CONFIG = tiny_vqgan_config(ch=32, ch_mult=(1,), num_res_blocks=1, z_channels=4, embed_dim=4, n_embed=16,
                                 resolution=16)


def micro(**changes) -> tv.TrainConfig:
    """A training config for the micro model on 16x16 shapes, without progress bars or evaluation."""
    settings = dict(model_config=MICRO_CONFIG, image_size=16, batch_size=4, steps=8, lr=3e-3, warmup_steps=2,
                    restart_every=3, eval_every=0, eval_count=0, checkpoint_every=0, progress=False)
    return tv.TrainConfig(**{**settings, **changes})


def reconstruction_error(model, images: torch.Tensor) -> float:
    """MSE of the model's quantised reconstruction of `images`."""
    with torch.no_grad():
        return float(F.mse_loss(model.decode(model.encode(images)), images))


@pytest.mark.slow  # several seconds: 80 training steps
def test_training_reduces_reconstruction_error() -> None:
    config = micro(steps=80)
    images = tv.batch_at(tv.world.ShapesDataset(64, 5, "train", 16), 0, 16)
    before = reconstruction_error(tv.build_model(config).eval(), images)
    model = tv.train(config)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert reconstruction_error(model, images) < 0.5 * before


def test_vq_losses_match_an_independent_computation() -> None:
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(2, 4, 3, 5, generator=generator, requires_grad=True)
    codebook = torch.randn(7, 4, generator=generator, requires_grad=True)
    quantized = tv.quantize(z, codebook)

    vectors, table = z.detach().permute(0, 2, 3, 1).reshape(-1, 4), codebook.detach()
    nearest = torch.tensor([min(range(7), key=lambda k: float((v - table[k]).square().sum())) for v in vectors])
    codes = table[nearest].view(2, 3, 5, 4).permute(0, 3, 1, 2)
    expected = (codes - z.detach()).square().mean()
    assert torch.equal(quantized.indices.flatten(), nearest)
    assert torch.allclose(quantized.codebook_loss, expected) and torch.allclose(quantized.commitment_loss, expected)
    assert torch.allclose(quantized.latent, codes)

    (quantized.latent.sum() + quantized.codebook_loss).backward()
    assert torch.allclose(z.grad, torch.ones_like(z))  # straight-through; the codebook loss does not reach z
    expected_codebook_grad = torch.zeros(7, 4).index_add_(
        0, nearest, 2 * (codes - z.detach()).permute(0, 2, 3, 1).reshape(-1, 4) / z.numel())
    assert torch.allclose(codebook.grad, expected_codebook_grad)


def test_commitment_loss_moves_only_the_latent() -> None:
    z = torch.randn(1, 4, 2, 2, requires_grad=True)
    codebook = torch.randn(5, 4, requires_grad=True)
    quantized = tv.quantize(z, codebook)
    quantized.commitment_loss.backward()
    assert codebook.grad is None and z.grad is not None and z.grad.abs().sum() > 0


def test_dead_codes_restart_on_encoder_outputs() -> None:
    codebook = torch.full((6, 3), 100.0)
    counts = torch.tensor([5, 0, 2, 0, 0, 1])
    z = torch.arange(24, dtype=torch.float32).view(2, 3, 2, 2)
    restarted = tv.restart_dead_codes(codebook, counts, z, torch.Generator().manual_seed(0))
    vectors = z.permute(0, 2, 3, 1).reshape(-1, 3)
    assert restarted == 3 and counts.sum() == 0
    assert (codebook[[0, 2, 5]] == 100).all()
    assert all((vectors == code).all(1).any() for code in codebook[[1, 3, 4]])


def test_training_keeps_the_codebook_in_use() -> None:
    model = tv.train(micro(steps=12))
    images = tv.held_out_images(8, 16)
    assert tv.evaluate(model, images)["codes_used"] >= 12


def test_resume_matches_an_uninterrupted_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    whole = tv.train(micro(out=str(tmp_path / "whole")))

    step_once = tv.train_step

    def crash_at_step_5(model, optimisation, images, step, *args):
        if step == 5:
            raise KeyboardInterrupt
        return step_once(model, optimisation, images, step, *args)

    config = micro(out=str(tmp_path / "resumed"), checkpoint_every=4)
    monkeypatch.setattr(tv, "train_step", crash_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        tv.train(config)
    monkeypatch.setattr(tv, "train_step", step_once)
    assert [path.name for path in (tmp_path / "resumed" / tv.CHECKPOINTS).iterdir()] == ["step-00000004"]
    resumed = tv.train(tv.TrainConfig(**{**vars(config), "resume": True}))
    for (name, expected), actual in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(expected, actual), name


def test_resume_refuses_another_architecture(tmp_path: Path) -> None:
    tv.train(micro(out=str(tmp_path), steps=2, checkpoint_every=2))
    other = tiny_vqgan_config(ch=32, ch_mult=(1,), z_channels=4, embed_dim=4, n_embed=8, resolution=16)
    with pytest.raises(InvalidInputError, match="another architecture"):
        tv.train(micro(out=str(tmp_path), steps=4, resume=True, model_config=other))


def test_export_round_trips_through_load_vqgan(tmp_path: Path) -> None:
    model = tv.train(micro(out=str(tmp_path), steps=3, eval_count=4))
    loaded = load_vqgan(tmp_path / tv.EXPORT_NAME)
    assert loaded.config.to_taming() == model.config.to_taming()
    for (name, expected), actual in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(expected, actual), name
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["eval_images"] == 4 and metrics["psnr"] > 0 and metrics["bytes"] > 0


def test_cli_trains_and_exports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config_file = tmp_path / "model.json"
    config_file.write_text(json.dumps(MICRO_CONFIG))
    tv.main(["--out", str(tmp_path / "run"), "--model-config", str(config_file), "--image-size", "16", "--steps", "2",
             "--batch-size", "2", "--eval-count", "4", "--no-progress", "--threads", "1"])
    assert "held-out PSNR" in capsys.readouterr().out
    assert load_vqgan(tmp_path / "run" / tv.EXPORT_NAME).n_embed == 16


def test_cli_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        tv.main(["--help"])
    assert exit_info.value.code == 0
    assert "--resume" in capsys.readouterr().out


def test_shipped_shapes_tiny_reconstructs_held_out_images() -> None:
    path = BUILTIN_VQGANS["shapes-tiny"]
    assert path.is_file() and path.stat().st_size <= 10 * 1024 * 1024
    assert "shapes-tiny" in known_vqgan_names()
    model = load_vqgan("shapes-tiny")
    images = tv.held_out_images(32, 64)
    metrics = tv.evaluate(model, images)
    assert metrics["psnr"] >= 25.0, metrics
    assert (model.factor, model.n_embed) == (4, 512)
