"""Batch jobs: many prompts (or settings) through one registered pipeline, resumable, sharded across processes.

CLI:  python -m pipelines.batch JOBS --pipeline NAME --output-dir DIR MODEL_FLAG MODEL [--clip-model ...] [options]
      accelerate launch --num_processes N -m pipelines.batch JOBS ...      (N processes, one device each)

JOBS is a text file (one prompt per line; blank lines and lines starting with '#' are skipped) or, when its
name ends in `.jsonl`, one JSON object of settings per line: `prompt`, optional `id` and `seed`, and any option
of the pipeline's call (`steps`, `cutn`, `size`, ...). Options on the command line are defaults a job may
override; `null` gives the pipeline's own default.

A job's id is its `id`, else `line-N` (N: its line in JOBS). Its images are `DIR/ID.png` (`ID-1.png`, `ID-2.png`,
... when a job makes several); each carries its recipe, whose command reproduces it with the pipeline's own CLI.
A job without a seed gets `derive_seed(--seed, id)`: the first 8 bytes of sha256("BASE:ID") modulo 2**31, so
the same file and base seed always give the same images, whichever process runs a job.

`DIR/manifest.jsonl` holds one line per job: id, line, prompt, files, seed, seconds, status (`done` or `failed`
with the one-line error), the fingerprint of its settings and when it finished. A rerun skips jobs that are done
with the same settings and files, and redoes the rest (failed, unfinished or changed ones). One process appends
to the manifest itself; N processes each append to `DIR/manifest.rank-K.jsonl` and merge all the parts into
`manifest.jsonl` (under a file lock) when they finish. Lines are appended whole and synced, images written to a
temporary file and renamed, so an interrupt leaves neither a half-written PNG nor a corrupt manifest line.
"""

from __future__ import annotations

import argparse
import difflib
import fcntl
import hashlib
import importlib
import json
import os
import re
import sys
import time
import typing
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from pipelines.parsers import batch_parser as build_parser
from pipelines.parsers import batch_pipeline_name

if __name__ == "__main__":  # parse first: --help and usage errors answer before the heavy imports below
    batch_pipeline_name(sys.argv[1:])

from tqdm.auto import tqdm

from guidance.errors import InvalidInputError, ToolkitError, first_line
from guidance.images import save_png
from guidance.outputs import atomic_path, check_folder
from guidance.runtime import pick_device
from guidance.validation import check_seed
from pipelines.common import command_line, run_cli
from pipelines.latent_optimization import DEFAULT_CLIP
from pipelines.registry import PipelineSpec, get_pipeline_spec

MANIFEST = "manifest.jsonl"
RUN_ONLY = {"prompt", "seed", "callback", "progress", "save_every"}  # call keywords a batch sets itself
BATCH_WIDE = {"model", "clip_model", "clip_models", "device", "output", "output_dir", "video"}
JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


# --- the pipeline's options -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One call keyword of a pipeline as a batch option: its CLI flag, how text becomes its value, repeatable."""

    name: str  # the call keyword, e.g. 'cut_pow'
    flag: str  # the pipeline CLI's option, e.g. '--cut-pow'
    convert: Callable[[str], Any]
    repeatable: bool  # a list option, given once per item (e.g. --image-prompt)
    switch: bool = False  # a boolean option: a flag without a value (e.g. --best-step, --no-best-step)

    def value(self, given: Any) -> Any:
        """A JSON or command-line value as the call takes it (a list for a repeatable option); ValueError if not."""
        if self.switch:
            if not isinstance(given, bool):
                raise ValueError(f"{self.name} takes true or false, got {json.dumps(given)}")
            return given
        if self.repeatable:
            items = given if isinstance(given, list) else [given]
            return [self._scalar(item) for item in items]
        return self._scalar(given)

    def _scalar(self, given: Any) -> Any:
        """One scalar through the converter (JSON numbers and strings alike, never booleans or containers)."""
        if isinstance(given, bool) or not isinstance(given, (str, int, float)):
            raise ValueError(f"{self.name} takes a {self.convert.__name__}, got {json.dumps(given)}")
        try:
            return self.convert(str(given))
        except ValueError:
            raise ValueError(f"{self.name} takes a {self.convert.__name__}, got {json.dumps(given)}") from None

    def argv(self, value: Any) -> list[str]:
        """The pipeline CLI's arguments giving this value."""
        if self.switch:  # either way: the pipeline's own default may be on or off
            return [self.flag] if value else [f"--no-{self.flag.removeprefix('--')}"]
        return [part for item in (value if self.repeatable else [value]) for part in (self.flag, str(item))]


def pipeline_class(spec: PipelineSpec) -> type:
    """The pipeline class of a spec: the class defined in its module with a `size_factor` and a call."""
    module = importlib.import_module(spec.module)
    classes = [value for value in vars(module).values()
               if isinstance(value, type) and value.__module__ == module.__name__ and hasattr(value, "size_factor")]
    if len(classes) != 1:
        raise InvalidInputError(f"pipeline {spec.name}: cannot tell its class in {spec.module} ({len(classes)} found)")
    return classes[0]


def pipeline_options(cls: type, spec: PipelineSpec) -> dict[str, Option]:
    """The batch options of a pipeline: every keyword of its call but those the batch sets itself."""
    hints = typing.get_type_hints(cls.__call__)
    return {name: _option(name, hints.get(name, str)) for name in sorted(spec.call_options(cls) - RUN_ONLY)}


def _option(name: str, hint: Any) -> Option:
    """An option from its call keyword and type hint: lists are repeatable strings; else str, float, int."""
    kinds = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, type(int | None)) else (hint,)
    if bool in kinds:
        return Option(name, "--" + name.replace("_", "-"), bool, False, switch=True)
    repeatable = any(typing.get_origin(kind) in (SequenceABC, list) for kind in kinds)
    convert = str if repeatable or str in kinds else float if float in kinds else int if int in kinds else str
    flag = "--" + (name[:-1] if repeatable and name.endswith("s") else name).replace("_", "-")
    return Option(name, flag, convert, repeatable)


def loader_options(cls: type, spec: PipelineSpec) -> dict[str, Option]:
    """The batch options set once when the pipeline loads (`spec.load_options`, typed by its from_pretrained)."""
    hints = typing.get_type_hints(cls.from_pretrained)
    return {name: _option(name, hints.get(name, str)) for name in spec.load_options}


def option_named(options: dict[str, Option], key: str) -> Option | None:
    """The option a JSON key names: its call keyword or its flag's name ('cut_pow', 'cut-pow', 'image_prompt')."""
    wanted = key.replace("-", "_")
    return next((option for option in options.values()
                 if wanted in (option.name, option.flag[2:].replace("-", "_"))), None)


# --- jobs -------------------------------------------------------------------------------------------------------


@dataclass
class Job:
    """One line of JOBS: its id, line, prompt, own options (overriding the command line's) and seed if set."""

    id: str
    line: int
    prompt: str
    options: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None


def read_jobs(path: Path, pipeline: str, options: dict[str, Option], load_keys: Sequence[str] = ()) -> list[Job]:
    """The jobs of a prompts file or a JSONL file, or a one-line error naming the file and line."""
    if not path.is_file():
        raise InvalidInputError(f"jobs file {path} not found; give a text file (one prompt per line) or a .jsonl file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise InvalidInputError(f"jobs file {path} is not UTF-8 text (byte {error.start}); save it as UTF-8") from None
    jsonl = path.suffix.lower() == ".jsonl"
    jobs = []
    for number, text in enumerate(lines, start=1):
        if not text.strip() or (not jsonl and text.lstrip().startswith("#")):
            continue
        jobs.append(_json_job(path, number, text, pipeline, options, load_keys) if jsonl
                    else Job(f"line-{number}", number, text.strip()))
    if not jobs:
        raise InvalidInputError(f"jobs file {path} has no jobs (it is empty or only blank lines); write one prompt "
                                "per line, or one JSON object per line in a .jsonl file")
    _check_unique(path, jobs)
    return jobs


def _json_job(path: Path, number: int, text: str, pipeline: str, options: dict[str, Option],
              load_keys: Sequence[str] = ()) -> Job:
    """One JSONL line as a job; every problem is one line naming the file and line."""
    where = f"{path}:{number}"
    try:
        settings = json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidInputError(f"{where}: malformed JSON ({error.msg} at column {error.colno}); each line must be one "
                                'object such as {"prompt": "a red circle", "steps": 50}') from None
    if not isinstance(settings, dict):
        raise InvalidInputError(f'{where}: a job is a JSON object such as {{"prompt": "a red circle"}}, '
                                f"not {type(settings).__name__}")
    settings = dict(settings)
    job_id, prompt, seed = settings.pop("id", f"line-{number}"), settings.pop("prompt", ""), settings.pop("seed", None)
    if settings.pop("pipeline", pipeline) != pipeline:
        raise InvalidInputError(f"{where}: this job names another pipeline than --pipeline {pipeline}; a batch runs "
                                "one pipeline (its model loads once), so split the file by pipeline")
    if not isinstance(job_id, str) or not JOB_ID.fullmatch(job_id):
        raise InvalidInputError(f"{where}: id {json.dumps(job_id)} is not a file name of letters, digits, '.', '_' "
                                "or '-' (at most 100, not starting with '.' or '-')")
    if not isinstance(prompt, str):
        raise InvalidInputError(f"{where}: prompt must be a string, got {json.dumps(prompt)}")
    try:
        seed = None if seed is None else check_seed(seed)
    except InvalidInputError as error:
        raise InvalidInputError(f"{where}: {error}") from None
    return Job(job_id, number, prompt, _job_options(where, settings, options, load_keys), seed)


def _job_options(where: str, settings: dict[str, Any], options: dict[str, Option],
                 load_keys: Sequence[str] = ()) -> dict[str, Any]:
    """A job's own options as call keywords (None: the pipeline's default), or a one-line error (also for the
    options in `load_keys`, which the whole batch sets when the pipeline loads)."""
    chosen: dict[str, Any] = {}
    for key, value in settings.items():
        option = option_named(options, key)
        if option is None:
            if key.replace("-", "_") in BATCH_WIDE | set(load_keys):
                raise InvalidInputError(f"{where}: {key!r} is set for the whole batch (the model loads once per "
                                        "process); give it on the command line")
            close = difflib.get_close_matches(key, [o.name for o in options.values()], n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise InvalidInputError(f"{where}: unknown option {key!r}; {hint}the options are "
                                    f"{', '.join(options)}")
        try:
            chosen[option.name] = None if value is None else option.value(value)
        except ValueError as error:
            raise InvalidInputError(f"{where}: {error}") from None
    return chosen


def _check_unique(path: Path, jobs: Sequence[Job]) -> None:
    """Refuse two jobs with the same id (their images would overwrite each other)."""
    seen: dict[str, int] = {}
    for job in jobs:
        if job.id in seen:
            raise InvalidInputError(f"{path}:{job.line}: id {job.id!r} is already used on line {seen[job.id]}; "
                                    "give every job its own id")
        seen[job.id] = job.line


def derive_seed(base: int, job_id: str) -> int:
    """The seed of a job that sets none: the first 8 bytes of sha256('BASE:ID') modulo 2**31."""
    return int.from_bytes(hashlib.sha256(f"{base}:{job_id}".encode()).digest()[:8], "big") % 2**31


def image_names(job_id: str, count: int) -> list[str]:
    """A job's file names: `ID.png`, or `ID-1.png`, `ID-2.png`, ... for several images (as the CLIs name them)."""
    return [f"{job_id}.png"] if count == 1 else [f"{job_id}-{i}.png" for i in range(1, count + 1)]


# --- the manifest -----------------------------------------------------------------------------------------------


def read_records(folder: Path) -> dict[str, dict[str, Any]]:
    """The latest record of each job in the manifest and its per-process parts; unreadable lines (a line cut by a
    kill) are skipped."""
    latest: dict[str, dict[str, Any]] = {}
    for path in [folder / MANIFEST, *sorted(folder.glob("manifest.rank-*.jsonl"))]:
        if not path.is_file():
            continue
        for text in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(text)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and "id" in record and record.get("finished", 0) >= latest.get(
                    record["id"], {}).get("finished", 0):
                latest[record["id"]] = record
    return latest


class ManifestLog:
    """An append-only JSONL file: each record is one whole line, flushed and synced before the next job."""

    def __init__(self, path: Path):
        self.path = path
        cut = path.is_file() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
        self.file = path.open("a", encoding="utf-8")
        if cut:  # a line cut by a kill: end it, so the next record starts a line of its own
            self.file.write("\n")

    def append(self, record: dict[str, Any]) -> None:
        """Append one record as a line, durably."""
        self.file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        """Close the file."""
        self.file.close()


def merge_manifest(folder: Path, order: Sequence[str]) -> Path:
    """Rewrite `manifest.jsonl` as the latest record of every job (jobs of `order` first, in its order), from the
    manifest and all per-process parts, atomically and under a lock, so the last process to merge leaves all."""
    with (folder / "manifest.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        records = read_records(folder)
        rank = {job_id: index for index, job_id in enumerate(order)}
        ordered = sorted(records.values(), key=lambda r: (rank.get(r["id"], len(rank)), r["id"]))
        path = folder / MANIFEST
        with atomic_path(path) as temporary:
            temporary.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ordered), encoding="utf-8")
    return path


# --- running ------------------------------------------------------------------------------------------------------


@dataclass
class Batch:
    """What every job of a run shares: the pipeline, its model, the CLIP models, defaults, base seed and folder."""

    spec: PipelineSpec
    model: str
    clip_models: list[str]
    device: str | None  # as given on the command line (None: each process's own)
    defaults: dict[str, Any]
    base_seed: int
    folder: Path
    options: dict[str, Option]
    load_settings: dict[str, Any] = field(default_factory=dict)  # set when the pipeline loads (not None ones)
    load_options: dict[str, Option] = field(default_factory=dict)

    def settings(self, job: Job) -> tuple[dict[str, Any], int]:
        """A job's call options (command-line defaults overridden by its own; None ones dropped) and its seed."""
        merged = {key: value for key, value in {**self.defaults, **job.options}.items() if value is not None}
        return merged, job.seed if job.seed is not None else derive_seed(self.base_seed, job.id)

    def fingerprint(self, job: Job) -> str:
        """A digest of everything that decides a job's images: a done job with another fingerprint is redone."""
        options, seed = self.settings(job)
        what = [self.spec.name, self.model, self.clip_models, job.prompt, options, seed]
        if self.load_settings:  # absent when empty, so batches without them keep their fingerprints
            what.append(self.load_settings)
        return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def command(self, job: Job, output: Path) -> str:
        """The pipeline CLI command that reproduces a job's image(s) into `output`."""
        options, seed = self.settings(job)
        argv = [self.spec.model_flag, self.model, *[part for clip in self.clip_models for part in ("--clip-model", clip)]]
        argv += [part for name, value in sorted(self.load_settings.items()) for part in self.load_options[name].argv(value)]
        argv += [part for name, value in sorted(options.items()) for part in self.options[name].argv(value)]
        argv += [*self.spec.cli_flags, *(["--device", self.device] if self.device else []), "--seed", str(seed),
                 "--output", str(output)]
        if job.prompt.startswith("-"):  # after '--', so the CLI reads it as the prompt, not an option
            argv += ["--", job.prompt]
        elif job.prompt:
            argv = [job.prompt, *argv]
        return command_line(self.spec.module, argv)

    def is_done(self, job: Job, record: dict[str, Any] | None) -> bool:
        """Whether a record shows the job done with its current settings, its files all present."""
        return (record is not None and record.get("status") == "done" and record.get("fingerprint") ==
                self.fingerprint(job) and all((self.folder / name).is_file() for name in record.get("files", [])))

    def run(self, pipeline: Any, job: Job) -> dict[str, Any]:
        """Run one job and save its images; its manifest record (status 'failed' with the error if it raised).
        A Ctrl-C inside the pipeline raises KeyboardInterrupt here, with nothing saved or recorded."""
        options, seed = self.settings(job)
        started = time.perf_counter()
        record = {"id": job.id, "line": job.line, "prompt": job.prompt, "seed": seed,
                  "fingerprint": self.fingerprint(job)}
        try:
            result = pipeline(job.prompt, seed=seed, progress=False, save_every=0, **options)
        except ToolkitError as error:
            return {**record, "files": [], "status": "failed", "error": first_line(error), **_finish(started)}
        except Exception as error:  # a bug or a backend failure fails this job, not the batch
            return {**record, "files": [], "status": "failed", "error": f"{type(error).__name__}: {first_line(error)}",
                    **_finish(started)}
        if result.interrupted:
            raise KeyboardInterrupt
        names = image_names(job.id, len(result.images))
        command = self.command(job, self.folder / f"{job.id}.png")
        for index, (image, name) in enumerate(zip(result.images, names)):
            save_png(image, self.folder / name, {**result.recipe_of(index), "command": command, "batch_job": job.id})
        return {**record, "files": names, "status": "done", **_finish(started)}


def _finish(started: float) -> dict[str, float]:
    """A record's timing: seconds taken and when it finished (epoch seconds; the latest record of a job wins)."""
    return {"seconds": round(time.perf_counter() - started, 2), "finished": time.time()}


def process_state(device: str | None) -> Any:
    """accelerate's view of this process (a `PartialState`): one process unless started by `accelerate launch`;
    processes on the CPU talk over gloo."""
    from accelerate import PartialState

    return PartialState(cpu=pick_device(device).type == "cpu")


def pending_jobs(batch: Batch, jobs: Sequence[Job]) -> list[Job]:
    """The jobs not yet done with their current settings."""
    records = read_records(batch.folder)
    return [job for job in jobs if not batch.is_done(job, records.get(job.id))]


def run_shard(batch: Batch, pipeline: Any, shard: Sequence[Job], log: ManifestLog, bar: Any) -> tuple[int, int]:
    """Run a process's jobs in order, recording each; returns (done, failed)."""
    done = failed = 0
    for job in shard:
        record = batch.run(pipeline, job)
        log.append(record)
        if record["status"] == "done":
            done += 1
        else:
            failed += 1
            tqdm.write(f"job {job.id} (line {job.line}) failed: {record['error']}", file=sys.stderr)
        bar.update(1)
    return done, failed


def remove_temporaries(folder: Path) -> None:
    """Delete the temporary files of images whose writing a kill cut short (they were never renamed)."""
    for path in folder.glob(".*.tmp.png"):
        path.unlink(missing_ok=True)


# --- the command line -------------------------------------------------------------------------------------------


def parse_arguments(argv: list[str]) -> tuple[argparse.Namespace, PipelineSpec, dict[str, Option], dict[str, Option]]:
    """Parse the command line in two passes: the pipeline first, then its own call and load options (and its
    --help); returns (arguments, spec, call options, load options)."""
    spec = get_pipeline_spec(batch_pipeline_name(argv))
    cls = pipeline_class(spec)
    options, load_options = pipeline_options(cls, spec), loader_options(cls, spec)
    return build_parser(spec, options, load_options).parse_args(argv), spec, options, load_options


def main(argv: list[str]) -> int:
    """Run the CLI; returns the exit code (0: all done, 1: some jobs failed, 2: bad input, 130: interrupted)."""
    args, spec, options, load_options = parse_arguments(argv)
    check_seed(args.seed)
    folder = check_folder(args.output_dir, "--output-dir")
    defaults = {name: getattr(args, name) for name in options if getattr(args, name) is not None}
    load_settings = {name: getattr(args, name) for name in load_options if getattr(args, name) is not None}
    batch = Batch(spec, args.model, args.clip_model or [DEFAULT_CLIP], args.device, defaults, args.seed, folder,
                  options, load_settings, load_options)
    jobs = read_jobs(Path(args.jobs), spec.name, options, list(load_options))
    state = process_state(args.device)
    rank, world = state.process_index, state.num_processes
    if state.is_main_process:
        remove_temporaries(folder)
    pending = pending_jobs(batch, jobs)
    state.wait_for_everyone()  # every process has read the same manifest before any process writes to it
    shard = pending[rank::world]
    device = pick_device(args.device) if args.device else state.device
    pipeline = spec.load(args.model, batch.clip_models, device, **load_settings)
    log = ManifestLog(folder / (MANIFEST if world == 1 else f"manifest.rank-{rank}.jsonl"))
    label = "batch" if world == 1 else f"batch {rank + 1}/{world}"
    total = len(jobs) if world == 1 else len(shard)
    bar = tqdm(total=total, initial=total - len(shard), desc=label, position=rank, unit="job", dynamic_ncols=True)
    try:
        done, failed = run_shard(batch, pipeline, shard, log, bar)
    finally:
        bar.close()
        log.close()
        merge_manifest(folder, [job.id for job in jobs])
    print(f"{label}: {done} done, {failed} failed, {len(jobs) - len(pending)} already done; "
          f"{folder / MANIFEST}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
