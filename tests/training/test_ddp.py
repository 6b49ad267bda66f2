"""Data-parallel CLIP training pieces (training.core): two gloo processes with batch B each give the loss and the
gradients of one process with batch 2B, because the features are gathered with their gradients."""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from guidance import InvalidInputError, load_clip
from training.core import (Optimisation, average_gradients, gather_with_grad, local_share, process_group,
                           start_data_parallel)
from training.train_clip import contrastive_loss

GLOBAL_BATCH = 8
# float32 sums taken in another order (the gathered logits, the all-reduce): agreement to about 1e-7 absolute
LOSS_TOLERANCE, GRAD_TOLERANCE = 1e-6, 1e-6


def one_step(config: dict) -> dict:
    """The loss and averaged gradients of one CLIP step on this process's share of a fixed global batch, then the
    parameters after one optimiser step (the same step through `Optimisation`)."""
    torch.manual_seed(0)
    clip = load_clip("ddp-tiny", architecture=copy.deepcopy(config))
    clip.model.train().requires_grad_(True)
    data = torch.Generator().manual_seed(1)
    images = torch.rand(GLOBAL_BATCH, 3, 32, 32, generator=data)
    captions = [f"a {colour} {shape}" for colour in ("red", "green", "blue", "white")
                for shape in ("circle", "square")][:GLOBAL_BATCH]
    images, captions = local_share(images), local_share(captions)

    def loss() -> torch.Tensor:
        return contrastive_loss(gather_with_grad(clip.encode_image(images)),
                                gather_with_grad(clip.encode_text(list(captions))), clip.model.logit_scale)

    parameters = list(clip.model.parameters())
    value = loss()
    value.backward()
    average_gradients(parameters)
    grads = {name: p.grad.clone() for name, p in clip.model.named_parameters()}
    optimisation = Optimisation(torch.optim.SGD(parameters, lr=0.1), warmup_steps=1, steps=2, grad_clip=1.0)
    optimisation.step(loss())
    return {"loss": value.item(), "grads": grads, "local": len(images),
            "params": {name: p.detach().clone() for name, p in clip.model.named_parameters()}}


def worker(rank: int, world: int, port: int, out: str, config: dict) -> None:
    """One process as `accelerate launch` starts it (its rank in the environment): join the group through
    accelerate (gloo on the CPU), run `one_step`, save its result."""
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    try:
        assert start_data_parallel("cpu") == "cpu" and process_group() == (rank, world)
        torch.save(one_step(config), Path(out) / f"rank-{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_processes(world: int, tmp_path: Path, config: dict, timeout: float = 240) -> list[dict]:
    """Run `worker` in `world` spawned processes (bounded in time); their results in rank order."""
    with socket.socket() as probe:  # a free localhost port for the group's rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    context = mp.start_processes(worker, args=(world, port, str(tmp_path), config), nprocs=world, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + timeout
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            raise AssertionError(f"the {world} processes did not finish in {timeout} s")
    return [torch.load(tmp_path / f"rank-{rank}.pt", weights_only=True) for rank in range(world)]


@pytest.mark.slow
def test_two_processes_with_batch_b_give_the_loss_and_gradients_of_one_with_batch_2b(tmp_path, tiny_clip_config):
    single = one_step(tiny_clip_config)
    assert single["local"] == GLOBAL_BATCH
    ranks = run_processes(2, tmp_path, tiny_clip_config)
    assert [r["local"] for r in ranks] == [GLOBAL_BATCH // 2] * 2
    for result in ranks:
        assert abs(result["loss"] - single["loss"]) < LOSS_TOLERANCE
        for name, grad in single["grads"].items():
            torch.testing.assert_close(result["grads"][name], grad, atol=GRAD_TOLERANCE, rtol=1e-4, msg=name)
    # every process holds the same weights after a step, so any one checkpoint resumes on any number of them
    for name, value in ranks[0]["params"].items():
        assert torch.equal(ranks[1]["params"][name], value), name
        torch.testing.assert_close(value, single["params"][name], atol=1e-6, rtol=1e-5)


def test_without_a_process_group_everything_is_local():
    features = torch.rand(4, 3, requires_grad=True)
    assert process_group() == (0, 1) and start_data_parallel("cpu") == "cpu"
    assert gather_with_grad(features) is features
    assert local_share([1, 2, 3]) == [1, 2, 3]
    parameter = torch.nn.Parameter(torch.ones(2))
    parameter.grad = torch.full((2,), 3.0)
    average_gradients([parameter])
    assert torch.equal(parameter.grad, torch.full((2,), 3.0))


def test_a_batch_that_does_not_split_over_the_processes_is_refused(monkeypatch):
    monkeypatch.setattr("training.core.process_group", lambda: (0, 3))
    with pytest.raises(InvalidInputError, match="--batch-size 8 does not split over 3 processes"):
        local_share(list(range(8)))


MICRO = {  # a one-layer ViT CLIP: a training step takes milliseconds
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 16, "width": 32, "layers": 1, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("accelerate", path=str(Path(sys.executable).parent)) is None,
                    reason="accelerate's launcher is not installed beside this Python")
def test_train_clip_under_accelerate_launch_trains_as_one_process_and_resumes_on_one(tmp_path):
    from training import train_clip as tc

    (tmp_path / "micro.json").write_text(json.dumps(MICRO))
    flags = ["--shapes", "--model-config", str(tmp_path / "micro.json"), "--batch-size", "8", "--lr", "1e-3",
             "--warmup-steps", "1", "--no-progress", "--no-eval-shapes", "--threads", "1", "--device", "cpu"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    launch = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_ip",
              "127.0.0.1", "--main_process_port", str(port), "-m", "training.train_clip"]
    done = subprocess.run([*launch, *flags, "--steps", "2", "--checkpoint-dir", str(tmp_path / "two")],
                          capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[2],
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert [p.name for p in (tmp_path / "two").iterdir()] == ["step-00000002"], "one process writes checkpoints"
    two_losses = [float(line.split("final loss ")[1].split(";")[0]) for line in done.stdout.splitlines()
                  if "final loss" in line]
    assert len(two_losses) == 2 and two_losses[0] == two_losses[1], "both processes see the global loss"

    config = tc.TrainConfig
    base = dict(shapes=True, model_config=str(tmp_path / "micro.json"), batch_size=8, lr=1e-3, warmup_steps=1,
                progress=False, eval_shapes=False, threads=1, steps=2)
    one = tc.train(config(**base))
    assert abs(one.losses[-1] - two_losses[0]) < 1e-3  # Adam's first step is about lr * sign(gradient)
    state = torch.load(tmp_path / "two" / "step-00000002" / "state.pt", weights_only=True)
    assert state["step"] == 2
    resumed = tc.train(config(**{**base, "steps": 4, "resume": str(tmp_path / "two")}))
    assert len(resumed.losses) == 2 and all(math.isfinite(loss) for loss in resumed.losses)
