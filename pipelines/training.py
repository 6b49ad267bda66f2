"""What the training entry points share: the seeded shapes data stream, the learning-rate schedule, optimiser
steps, checkpoints that resume bit-exactly, thread settings, and the command line's common flags and errors.

A checkpoint is a folder `checkpoints/step-N` holding `model.safetensors` (written by the trainer) and
`state.pt` (optimiser and random states, read with `weights_only`); it is written under a `.part` name and
renamed when complete, and older checkpoints are dropped once a newer one exists.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import torch
from tqdm import tqdm

from guidance.errors import InvalidInputError, ToolkitError
from pipelines import shapes_world as world

CHECKPOINTS = "checkpoints"
WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "state.pt"

Config = TypeVar("Config")


# --- data and optimisation ----------------------------------------------------------------------------


def batch_at(dataset: world.ShapesDataset, step: int, batch_size: int) -> torch.Tensor:
    """The images of one step's batch: items `step * batch_size` onwards of the stream."""
    return torch.stack([dataset[index][0] for index in range(step * batch_size, (step + 1) * batch_size)])


def learning_rate(step: int, peak: float, warmup_steps: int, steps: int) -> float:
    """Linear warm-up to `peak`, then cosine decay to a tenth of it at the last step."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(steps - warmup_steps, 1)
    return peak * (0.1 + 0.45 * (1 + math.cos(math.pi * min(progress, 1.0))))


def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, lr: float, grad_clip: float) -> bool:
    """Set the learning rate, backpropagate `loss`, clip the gradient norm (unless `grad_clip` is 0) and step.

    A step whose gradient is not finite (a NaN or infinite loss included) is skipped, so that one bad batch
    cannot turn every weight into NaN; returns whether the step was taken."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    norm = torch.nn.utils.clip_grad_norm_(parameters, grad_clip if grad_clip else math.inf)
    if not torch.isfinite(norm):
        optimizer.zero_grad(set_to_none=True)
        return False
    optimizer.step()
    return True


def due(step: int, every: int) -> bool:
    """Whether something done every `every` steps (0: never) falls after step index `step`."""
    return bool(every) and (step + 1) % every == 0


def progress_bar(start: int, steps: int, desc: str, enabled: bool) -> tqdm:
    """The tqdm bar over the step indices still to run."""
    return tqdm(range(start, steps), initial=start, total=steps, desc=desc, disable=not enabled, dynamic_ncols=True)


# --- runs and checkpoints -----------------------------------------------------------------------------


def check_run(steps: int, batch_size: int, resume: bool, out: str | None) -> None:
    """Refuse run settings that cannot train, with the fix in the message."""
    if steps < 1 or batch_size < 1:
        raise InvalidInputError("--steps and --batch-size must be at least 1")
    if resume and not out:
        raise InvalidInputError("--resume needs --out, the folder holding the run's checkpoints")


def save_checkpoint(directory: Path, step: int, write_weights: Callable[[Path], Any], state: dict[str, Any]) -> Path:
    """Write `directory/step-N`: `write_weights(path of model.safetensors)`, then `state` with the step and torch's
    random state; drop older checkpoints."""
    target = directory / f"step-{step:08d}"
    partial = directory / f"{target.name}.part"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    write_weights(partial / WEIGHTS_FILE)
    torch.save({"step": step, **state, "torch_rng": torch.get_rng_state()}, partial / STATE_FILE)
    partial.rename(target)
    for older in directory.glob("step-*"):
        if older.name < target.name:
            shutil.rmtree(older)
    return target


def latest_checkpoint(directory: Path) -> Path | None:
    """The newest complete checkpoint under `directory`, if any."""
    found = sorted(path for path in directory.glob("step-*") if path.is_dir() and not path.name.endswith(".part"))
    return found[-1] if found else None


def read_state(checkpoint: Path) -> dict[str, Any]:
    """A checkpoint's saved state (step, optimiser, ...); restores torch's global random state from it."""
    state = torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=True)
    torch.set_rng_state(state["torch_rng"])
    return state


def resume_step(out: str | None, resume: bool, load: Callable[[Path], int]) -> int:
    """The step to start from: `load(latest checkpoint under out)` when resuming and there is one, else 0."""
    found = latest_checkpoint(Path(out) / CHECKPOINTS) if resume else None
    if resume and found is None:
        tqdm.write(f"no checkpoint under {Path(out) / CHECKPOINTS}; starting from step 0")
    return load(found) if found else 0


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block on `threads` torch CPU threads (None: unchanged), then restore the previous setting."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# --- command line -------------------------------------------------------------------------------------


def add_run_arguments(parser: argparse.ArgumentParser, defaults: Any, out_help: str) -> None:
    """The flags every trainer shares, with defaults from the trainer's config dataclass `defaults`."""
    parser.add_argument("--out", required=True, help=out_help)
    parser.add_argument("--steps", type=int, default=defaults.steps, help="optimiser steps in all")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="images per step")
    parser.add_argument("--lr", type=float, default=defaults.lr, help="peak learning rate")
    parser.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps, help="linear warm-up steps")
    parser.add_argument("--grad-clip", type=float, default=defaults.grad_clip, help="gradient norm limit (0: none)")
    parser.add_argument("--seed", type=int, default=defaults.seed,
                        help="seed of the weights, the data and every random draw")
    parser.add_argument("--image-size", type=int, default=defaults.image_size, help="side of the training images")
    parser.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every,
                        help="checkpoint every this many steps (0: never)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint under --out")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 for bit-exact reruns)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")


def train_or_exit(train: Callable[[Config], Any], config: Config) -> None:
    """Run `train(config)` for a CLI: a user error prints one line on stderr and exits with status 2."""
    try:
        train(config)
    except ToolkitError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
