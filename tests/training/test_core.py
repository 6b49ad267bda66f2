"""What the trainers share (training.core): the schedule, the skipped non-finite step, the EMA, the loop's
evaluation and checkpoint timing, the checkpoint layout and resume, and the error exit."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from guidance.errors import InvalidInputError
from training import core


def linear_optimisation(warmup_steps: int = 2, steps: int = 10, lr: float = 0.1,
                        final_lr_share: float = 0.0) -> core.Optimisation:
    """An Optimisation of SGD on a seeded 2x2 linear layer."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(2, 2)
    return core.Optimisation(torch.optim.SGD(layer.parameters(), lr=lr), warmup_steps, steps, 1.0, final_lr_share)


def loss_of(optimisation: core.Optimisation, value: float = 1.0) -> torch.Tensor:
    """A loss on the optimised layer's weights, scaled by `value` (NaN or inf to make a non-finite gradient)."""
    weights = optimisation.optimizer.param_groups[0]["params"][0]
    return weights.sum() * value


@pytest.mark.parametrize("final_lr_share", [0.0, 0.1])
def test_schedule_warms_up_then_decays_with_the_cosine(final_lr_share: float) -> None:
    optimisation = linear_optimisation(warmup_steps=4, steps=12, lr=0.1, final_lr_share=final_lr_share)
    rates = []
    for _ in range(12):
        rates.append(optimisation.lr)
        optimisation.step(loss_of(optimisation))
    # Warm-up: step i (from 0) at (i + 1) / 4 of the peak; then the cosine towards the floor, one step ahead.
    assert rates[:4] == pytest.approx([0.025, 0.05, 0.075, 0.1])
    share = [final_lr_share + (1 - final_lr_share) * 0.5 * (1 + math.cos(math.pi * (i - 3) / 9)) for i in range(3, 12)]
    assert rates[3:] == pytest.approx([0.1 * s for s in share])
    assert all(a > b for a, b in zip(rates[3:], rates[4:])) and rates[-1] > 0.1 * final_lr_share
    assert optimisation.lr == pytest.approx(0.1 * final_lr_share), "the step after the last would reach the floor"


def test_a_non_finite_step_is_skipped_and_the_schedule_advances() -> None:
    optimisation = linear_optimisation(warmup_steps=0)
    weights = optimisation.optimizer.param_groups[0]["params"][0]
    before, position = weights.detach().clone(), optimisation.schedule.last_epoch
    for bad in (math.nan, math.inf):
        assert not optimisation.step(loss_of(optimisation, bad))
        assert torch.equal(weights, before) and weights.grad is None
    assert optimisation.schedule.last_epoch == position + 2
    assert optimisation.step(loss_of(optimisation)) and not torch.equal(weights, before)


def test_a_loss_scaler_scales_unscales_skips_overflows_and_checkpoints() -> None:
    """fp16's loss scaler (a GradScaler): the step is the unscaled one, an overflow is skipped and halves
    the scale, and the scaler's state goes into the checkpoint state."""
    plain, scaled = linear_optimisation(warmup_steps=0, lr=0.1), linear_optimisation(warmup_steps=0, lr=0.1)
    scaled.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    assert plain.step(loss_of(plain)) and scaled.step(loss_of(scaled))
    weights = [o.optimizer.param_groups[0]["params"][0] for o in (plain, scaled)]
    assert torch.allclose(weights[0], weights[1])
    before = weights[1].detach().clone()
    assert not scaled.step(loss_of(scaled, math.inf))
    assert torch.equal(weights[1], before) and scaled.scaler.get_scale() == 2.0 ** 7
    state = scaled.state_dict()
    restored = linear_optimisation(warmup_steps=0, lr=0.1)
    restored.scaler = torch.amp.GradScaler("cpu")
    restored.load_state_dict(state)
    assert restored.scaler.get_scale() == 2.0 ** 7


def test_gradient_norm_is_clipped() -> None:
    optimisation = linear_optimisation(warmup_steps=0, lr=1.0)
    weights = optimisation.optimizer.param_groups[0]["params"][0]
    before, rate = weights.detach().clone(), optimisation.lr
    optimisation.step(loss_of(optimisation, 1000.0))  # gradient norm 2000, clipped to 1 (SGD moves by lr * grad)
    assert float((weights.detach() - before).norm()) == pytest.approx(rate, rel=1e-4)


def test_ema_warms_up_and_averages() -> None:
    ema = core.EMA(torch.nn.Linear(2, 2), 0.999)
    # The decay after step index i is (1 + i) / (10 + i), capped: 0.1 after the first update.
    assert ema.get_decay(1) == pytest.approx(0.1) and ema.get_decay(10**6) == 0.999
    average, model = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    ema = core.EMA(average, 0.9)
    ema.optimization_step = 10**6
    expected = [0.9 * a.detach() + 0.1 * b.detach() for a, b in zip(average.parameters(), model.parameters())]
    ema.step(model.parameters())
    assert all(torch.allclose(a, b) for a, b in zip(ema.copy_to_module().parameters(), expected))
    assert not any(p.requires_grad for p in ema.module.parameters())
    assert "shadow_params" not in ema.hyper_state() and ema.hyper_state()["optimization_step"] == 10**6 + 1


def test_run_steps_evaluates_and_checkpoints_on_time() -> None:
    seen: list[tuple[str, int]] = []
    config = SimpleNamespace(steps=6, progress=False, eval_every=3, checkpoint_every=2)
    core.run_steps(lambda i: seen.append(("step", i)) or {}, 1, config, "test",
                   evaluate=lambda done: seen.append(("eval", done)),
                   checkpoint=lambda done: seen.append(("checkpoint", done)), final_checkpoint=True)
    assert seen == [("step", 1), ("checkpoint", 2), ("step", 2), ("eval", 3), ("step", 3), ("checkpoint", 4),
                    ("step", 4), ("step", 5), ("checkpoint", 6)]  # no evaluation after the last step


def test_checkpoints_keep_the_latest_and_resume_exactly(tmp_path: Path) -> None:
    optimisation = linear_optimisation()
    written = []
    for step in (1, 2):
        optimisation.step(loss_of(optimisation))
        written.append(core.save_checkpoint(tmp_path, step, lambda path: path.write_bytes(b"weights"), optimisation,
                                            {"extra": torch.tensor([step])}))
    assert [path.name for path in tmp_path.iterdir()] == ["step-00000002"]
    assert sorted(path.name for path in written[-1].iterdir()) == [core.WEIGHTS_FILE, core.STATE_FILE]
    torch.load(written[-1] / core.STATE_FILE, weights_only=True)  # no pickled code

    expected = torch.rand(3)
    resumed = linear_optimisation()
    assert core.find_checkpoint(tmp_path) == core.find_checkpoint(written[-1]) == written[-1]
    state = core.restore(written[-1], resumed)
    assert state["step"] == 2 and int(state["extra"]) == 2
    assert torch.equal(torch.rand(3), expected), "torch's random state is restored"
    assert resumed.lr == optimisation.lr and resumed.schedule.last_epoch == optimisation.schedule.last_epoch
    assert core.resume_step(tmp_path, lambda path: int(core.restore(path, resumed)["step"])) == 2
    assert core.resume_step(tmp_path / "none", lambda path: 1 / 0) == 0
    assert core.resume_step(None, lambda path: 1 / 0) == 0


def test_a_missing_checkpoint_and_a_partial_one_are_not_found(tmp_path: Path) -> None:
    (tmp_path / "step-00000009.part").mkdir()
    assert core.find_checkpoint(tmp_path) is None
    with pytest.raises(InvalidInputError, match="no checkpoint in") as info:
        core.require_checkpoint(tmp_path)
    assert "\n" not in str(info.value)


def test_user_errors_exit_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    def refuse(config: int) -> int:
        raise InvalidInputError(f"bad setting {config}")

    assert core.train_or_exit(lambda config: config + 1, 1) == 2
    with pytest.raises(SystemExit) as info:
        core.train_or_exit(refuse, 7)
    assert info.value.code == 2 and capsys.readouterr().err == "error: bad setting 7\n"
    with pytest.raises(InvalidInputError, match="--steps"):
        core.check_run(0, 4)
    with pytest.raises(InvalidInputError, match="--resume needs --out"):
        core.check_run(1, 1, resume=True, out=None)
