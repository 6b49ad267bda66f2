"""What the three trainers share: the evaluation seed, the seeded data stream, the optimiser step with its
learning-rate schedule, the weights' EMA, the training loop, checkpoints that resume bit-exactly, thread
settings, and the command line's common flags and error exit.

Schedule: transformers' `get_scheduler("cosine_with_min_lr")` (the cosine-with-warm-up of diffusers'
`get_scheduler`, plus a floor), run one step ahead: step i (from 0) trains at (i + 1) / warmup_steps of the peak
during the warm-up, then the rate follows a cosine from the peak down towards `final_lr_share` of it, which the
step after the last would reach. It advances once per step, a skipped one included.

A checkpoint is a folder `step-NNNNNNNN` inside a checkpoint directory, holding `model.safetensors` (written by
the trainer) and `state.pt` (the step, optimiser, schedule and random states: tensors and plain values only, read
with `torch.load(weights_only=True)`); it is written under a `.part` name and renamed when complete, and older
checkpoints are dropped once a newer one exists. Resuming from it continues exactly as the uninterrupted run.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import functools
import json
import math
import os
import re
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

import torch
from diffusers.training_utils import EMAModel
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import Dataset
from tqdm import tqdm
from transformers.optimization import get_scheduler

from guidance.errors import InvalidInputError, ToolkitError

EVAL_SEED = 20240601  # seed of every held-out evaluation: images, noise and samples
CHECKPOINTS = "checkpoints"
WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "state.pt"
METRICS_FILE = "metrics.json"

Config = TypeVar("Config")
Result = TypeVar("Result")


# --- configuration -----------------------------------------------------------------------------------


@dataclasses.dataclass
class OptimisationConfig:
    """The optimisation settings of every trainer (the flags of `add_optimisation_arguments`); a trainer's config
    dataclass derives from it, adds its own settings and may change the defaults."""

    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 100
    grad_clip: float = 1.0
    seed: int = 0
    threads: int | None = None
    progress: bool = True


@dataclasses.dataclass
class RunConfig(OptimisationConfig):
    """The settings of a trainer whose run lives in one `--out` folder (the flags of `parse_run_config`)."""

    out: str | None = None
    image_size: int = 64
    eval_every: int = 600
    eval_count: int = 16
    checkpoint_every: int = 600
    resume: bool = False


# --- data ---------------------------------------------------------------------------------------------


def batch_at(dataset: Dataset, step: int, batch_size: int) -> torch.Tensor:
    """The images of one step's batch: items `step * batch_size` onwards of the stream."""
    return captioned_batch_at(dataset, step, batch_size)[0]


def captioned_batch_at(dataset: Dataset, step: int, batch_size: int) -> tuple[torch.Tensor, list[str]]:
    """The images and captions of one step's batch of an (image, caption) stream."""
    items = [dataset[index] for index in range(step * batch_size, (step + 1) * batch_size)]
    return torch.stack([image for image, _ in items]), [caption for _, caption in items]


# --- optimisation -------------------------------------------------------------------------------------


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, steps: int, final_lr_share: float) -> LambdaLR:
    """The shared schedule of `optimizer`'s learning rate (its `lr` is the peak) over `steps` steps; see above."""
    schedule = get_scheduler("cosine_with_min_lr", optimizer, num_warmup_steps=warmup_steps,
                             num_training_steps=steps + 1, scheduler_specific_kwargs={"min_lr_rate": final_lr_share})
    with warnings.catch_warnings():  # torch warns of a schedule step before any optimiser step: here it is meant
        warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
        schedule.step()
    return schedule


class Optimisation:
    """An optimiser with the shared warm-up + cosine learning-rate schedule and gradient-norm clipping."""

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_steps: int, steps: int, grad_clip: float,
                 final_lr_share: float = 0.0) -> None:
        """Schedule `optimizer`'s learning rate over `steps` steps (`warmup_cosine`); clip at `grad_clip` (0: off).
        `scaler` (set after construction): the fp16 loss scaler of accelerate's mixed precision, or None."""
        self.optimizer = optimizer
        self.schedule = warmup_cosine(optimizer, warmup_steps, steps, final_lr_share)
        self.grad_clip = grad_clip
        self.scaler: torch.amp.GradScaler | None = None

    @property
    def lr(self) -> float:
        """The learning rate of the next step."""
        return self.optimizer.param_groups[0]["lr"]

    def step(self, loss: torch.Tensor) -> bool:
        """Backpropagate `loss`, average the gradients over the data-parallel processes (if any), clip the
        gradient norm, step, and advance the schedule.

        A step whose gradient is not finite (a NaN or infinite loss included) is skipped, so that one bad batch
        cannot turn every weight into NaN; the schedule advances all the same. Returns whether the step was taken.
        With a loss scaler the scaled gradients are averaged first, so every process sees the same overflow."""
        self.optimizer.zero_grad(set_to_none=True)
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        parameters = [p for group in self.optimizer.param_groups for p in group["params"]]
        average_gradients(parameters)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(parameters, self.grad_clip if self.grad_clip else math.inf)
        taken = bool(torch.isfinite(norm))
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # skips the step itself when the unscaled gradient is not finite
            self.scaler.update()
        elif taken:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.schedule.step()
        return taken

    def state_dict(self) -> dict[str, Any]:
        """The optimiser's, the schedule's and the loss scaler's state, for a checkpoint."""
        scaler = {"scaler": self.scaler.state_dict()} if self.scaler is not None else {}
        return {"optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(), **scaler}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])


class EMA(EMAModel):
    """diffusers' EMAModel of a module's parameters, kept in a copy of the module for evaluation and export.

    Its decay is warmed up as (1 + i) / (10 + i) after step index i, from the first update on (diffusers' own
    warm-up copies the weights at the first update), and capped at `decay`."""

    def __init__(self, module: torch.nn.Module, decay: float) -> None:
        """Average `module`'s parameters; `self.module` is a frozen copy of it that `copy_to_module` fills."""
        super().__init__(module.parameters(), decay=decay)
        self.module = copy.deepcopy(module).requires_grad_(False)

    def get_decay(self, optimization_step: int) -> float:
        """The decay of the `optimization_step`-th update (1 for the first)."""
        return min(self.decay, optimization_step / (9 + optimization_step))

    def copy_to_module(self) -> torch.nn.Module:
        """Write the averaged weights into `self.module` and return it."""
        self.copy_to(self.module.parameters())
        return self.module

    def hyper_state(self) -> dict[str, Any]:
        """The EMA's state without its weights (the step count and settings), for a checkpoint."""
        return {key: value for key, value in self.state_dict().items() if key != "shadow_params"}


@contextlib.contextmanager
def evaluating(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Put `module` in eval mode for the block, then back in the mode it was in."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


# --- data parallel -----------------------------------------------------------------------------------


def start_data_parallel(device: str) -> str:
    """Join the data-parallel run that `accelerate launch` (or torchrun) started, if any: accelerate initialises
    the process group (gloo on the CPU, NCCL on GPUs); returns this process's device (its own GPU). A plain run
    is left as it is."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    from accelerate import PartialState

    state = PartialState(cpu=torch.device(device).type == "cpu")
    return device if state.device.type == "cpu" else str(state.device)


def process_group() -> tuple[int, int]:
    """(rank, number of processes) of the data-parallel run: (0, 1) unless torch.distributed is initialised
    (as `accelerate launch` or torchrun do)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def local_share(items: Sequence[Any]) -> Sequence[Any]:
    """This process's share of a global batch: the rank-th of `world` equal consecutive parts (all of it for one
    process). The global batch, and so the data order, does not depend on the number of processes."""
    rank, world = process_group()
    if len(items) % world:
        raise InvalidInputError(f"--batch-size {len(items)} does not split over {world} processes; use a multiple "
                                f"of {world}")
    size = len(items) // world
    return items[rank * size:(rank + 1) * size]


def gather_with_grad(features: torch.Tensor) -> torch.Tensor:
    """Every process's features concatenated in rank order, gradients flowing back to each process's own
    (open_clip's gather_with_grad): a contrastive loss over them sees the negatives of every process.

    When each process computes the same loss over the gathered features, each local feature's gradient comes
    back summed over the N processes (N times the loss's), and `average_gradients` divides by N again: the
    parameters get the gradient of one process over the whole global batch."""
    _, world = process_group()
    if world == 1:
        return features
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(features), dim=0)


def average_gradients(parameters: Sequence[torch.nn.Parameter]) -> None:
    """Average the parameters' gradients over the processes (what DDP does), in one flat all-reduce; nothing for
    a single process."""
    _, world = process_group()
    grads = [p.grad for p in parameters if p.grad is not None]
    if world == 1 or not grads:
        return
    flat = torch.cat([grad.reshape(-1) for grad in grads])
    torch.distributed.all_reduce(flat)
    flat /= world
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset:offset + grad.numel()].view_as(grad))
        offset += grad.numel()


# --- the loop -----------------------------------------------------------------------------------------


def due(step: int, every: int) -> bool:
    """Whether something done every `every` steps (0: never) falls after step index `step`."""
    return bool(every) and (step + 1) % every == 0


def progress_bar(start: int, steps: int, desc: str, enabled: bool) -> tqdm:
    """The tqdm bar over the step indices still to run."""
    return tqdm(range(start, steps), initial=start, total=steps, desc=desc, disable=not enabled, dynamic_ncols=True)


def run_steps(step: Callable[[int], dict[str, Any]], start: int, config: Any, desc: str, *,
              evaluate: Callable[[int], Any] | None = None, checkpoint: Callable[[int], Any] | None = None,
              final_checkpoint: bool = False) -> None:
    """Run step indices `start` to `config.steps - 1`: `step(i)` trains and returns what the progress bar shows
    (`config.progress`: whether there is one).

    After every `config.eval_every` steps but the last (whose evaluation is the caller's final one),
    `evaluate(steps done)`; after every `config.checkpoint_every` steps, and after the last one too when
    `final_checkpoint`, `checkpoint(steps done)`. Either may be None: not done."""
    bar = progress_bar(start, config.steps, desc, config.progress)
    for index in bar:
        bar.set_postfix(step(index))
        done = index + 1
        if evaluate is not None and due(index, config.eval_every) and done < config.steps:
            evaluate(done)
        last = final_checkpoint and done == config.steps
        if checkpoint is not None and (due(index, config.checkpoint_every) or last):
            checkpoint(done)
    bar.close()


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block on `threads` torch CPU threads (None: unchanged), then restore the previous setting."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def on_threads(train: Callable[[Config], Result]) -> Callable[[Config], Result]:
    """Decorate a trainer's `train(config)` to run on `config.threads` torch CPU threads (None: unchanged) and
    restore the previous setting afterwards."""

    @functools.wraps(train)
    def threaded(config: Config) -> Result:
        with torch_threads(config.threads):
            return train(config)

    return threaded


def check_run(steps: int, batch_size: int, resume: bool = False, out: str | None = None) -> None:
    """Refuse run settings that cannot train, with the fix in the message."""
    if steps < 1 or batch_size < 1:
        raise InvalidInputError("--steps and --batch-size must be at least 1")
    if resume and not out:
        raise InvalidInputError("--resume needs --out, the folder holding the run's checkpoints")


# --- checkpoints --------------------------------------------------------------------------------------


def save_checkpoint(directory: str | Path, step: int, write_weights: Callable[[Path], Any],
                    optimisation: Optimisation, state: dict[str, Any] | None = None) -> Path:
    """Write `directory/step-N`: `write_weights(path of model.safetensors)`, then the step, the optimisation's
    state, `state` and torch's random state; drop older checkpoints."""
    directory = Path(directory)
    target = directory / f"step-{step:08d}"
    partial = directory / f"{target.name}.part"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    write_weights(partial / WEIGHTS_FILE)
    torch.save({"step": step, **optimisation.state_dict(), **(state or {}), "torch_rng": torch.get_rng_state()},
               partial / STATE_FILE)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    for older in directory.glob("step-*"):
        if older.name < target.name:
            shutil.rmtree(older)
    return target


def find_checkpoint(path: str | Path) -> Path | None:
    """`path` itself when it is a checkpoint, else the newest complete checkpoint inside it; None if there is none."""
    path = Path(path)
    if (path / STATE_FILE).is_file():
        return path
    found = sorted(p for p in path.glob("step-*") if p.is_dir() and not p.name.endswith(".part"))
    return found[-1] if found else None


def require_checkpoint(path: str | Path) -> Path:
    """The checkpoint at or inside `path` (see `find_checkpoint`); a one-line error when there is none."""
    found = find_checkpoint(path)
    if found is None:
        raise InvalidInputError(f"no checkpoint in {path}; give a checkpoint folder (holding {STATE_FILE} and "
                                f"{WEIGHTS_FILE}) or the folder of its step-N checkpoints")
    return found


def restore(checkpoint: Path, optimisation: Optimisation) -> dict[str, Any]:
    """Restore the optimisation and torch's global random state from a checkpoint; return its whole saved state."""
    state = torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=True)
    optimisation.load_state_dict(state)
    torch.set_rng_state(state["torch_rng"])
    return state


def resume_step(directory: str | Path | None, load: Callable[[Path], int]) -> int:
    """The step to start from: `load(newest checkpoint in directory)` if there is one, else 0 (None: a new run)."""
    found = find_checkpoint(directory) if directory is not None else None
    if directory is not None and found is None:
        tqdm.write(f"no checkpoint under {directory}; starting from step 0")
    return load(found) if found is not None else 0


# --- command line -------------------------------------------------------------------------------------


def add_optimisation_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, defaults: Any) -> None:
    """The optimisation flags every trainer shares, with defaults from the trainer's config dataclass `defaults`."""
    parser.add_argument("--steps", type=int, default=defaults.steps, help="optimiser steps in all")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="images per step")
    parser.add_argument("--lr", type=float, default=defaults.lr, help="peak learning rate")
    parser.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps,
                        help="linear warm-up steps before the cosine decay")
    parser.add_argument("--grad-clip", type=float, default=defaults.grad_clip, help="gradient norm limit (0: none)")
    parser.add_argument("--seed", type=int, default=defaults.seed,
                        help="seed of the weights, the data and every random draw")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 for bit-exact reruns)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")


Flag = tuple[str, dict[str, Any]]  # a flag's name and its `add_argument` keywords, its default left out


def parse_run_config(config_type: type[Config], prog: str, doc: str, out_help: str, flags: Sequence[Flag],
                     argv: Sequence[str] | None) -> Config:
    """Read the command line of a trainer whose run lives in one `--out` folder (checkpoints and metrics.json
    included) into its config dataclass `config_type`: the shared flags, then the trainer's `flags` (its
    `--eval-every` and `--eval-count` among them); each flag defaults to the config field of its name."""
    defaults = config_type()
    parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0])
    parser.add_argument("--out", required=True, help=out_help)
    add_optimisation_arguments(parser, defaults)
    parser.add_argument("--image-size", type=int, default=defaults.image_size, help="side of the training images")
    parser.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every,
                        help="checkpoint every this many steps (0: never)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint under --out")
    for name, settings in flags:
        parser.add_argument(name, default=getattr(defaults, name[2:].replace("-", "_")), **settings)
    return config_type(**vars(parser.parse_args(argv)))


def write_metrics(config: Any, export: Path, summary: dict[str, Any], seconds: float) -> None:
    """Write `config.out/metrics.json`: `summary`, the run's `seconds`, the size in bytes of `export` (a file or a
    folder) and the config dataclass."""
    files = [export] if export.is_file() else [p for p in export.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    summary = {**summary, "seconds": round(seconds, 1), "bytes": size, "config": dataclasses.asdict(config)}
    (Path(config.out) / METRICS_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


def train_or_exit(train: Callable[[Config], Result], config: Config) -> Result:
    """Run `train(config)` for a CLI and return its result; a user error prints one line on stderr and exits
    with status 2."""
    try:
        return train(config)
    except ToolkitError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def train_and_summarise(train: Callable[[Config], Any], config: Config, export: str) -> dict[str, Any]:
    """Run `train(config)` for a CLI (see `train_or_exit`), print where `export` (under `config.out`) went, and
    return the run's metrics.json summary."""
    train_or_exit(train, config)
    out = Path(config.out)
    summary = json.loads((out / METRICS_FILE).read_text(encoding="utf-8"))
    print(f"wrote {out / export} ({summary['bytes']} bytes) in {summary['seconds']:.0f} s")
    return summary
