"""Benchmark batch jobs across processes: wall time of `pipelines.batch` over the same jobs with 1 process and
with N processes under `accelerate launch`, each into a fresh folder (the shipped shapes-tiny models, no download).

Each process runs with `--threads` torch threads, so on a CPU N processes use N * threads cores. Wall time
includes starting the processes and loading the models once per process, as a user sees it.

    python bench/batch_scaling.py --jobs 8 --processes 1 2 --json bench/results/batch_scaling.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from runner import machine

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [f"a {colour} {shape}" for colour in ("red", "green", "blue", "yellow", "orange", "purple", "white", "black")
           for shape in ("circle", "square", "triangle", "star")]


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def batch_command(processes: int, jobs: Path, out: Path, options: list[str]) -> list[str]:
    """The command running the batch with this many processes (plain Python for one, accelerate for more)."""
    batch = ["-m", "pipelines.batch", str(jobs), "--output-dir", str(out), *options]
    if processes == 1:
        return [sys.executable, *batch]
    launcher = str(Path(sys.executable).parent / "accelerate")
    # --multi_gpu starts N processes through torchrun; on a CPU they talk over gloo
    return [launcher, "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_ip", "127.0.0.1",
            "--main_process_port", str(free_port()), *batch]


def measure(processes: int, jobs: Path, folder: Path, options: list[str], threads: int) -> dict:
    """Wall time of one batch run with this many processes; checks that every job is done exactly once."""
    out = folder / f"out-{processes}"
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    done = subprocess.run(batch_command(processes, jobs, out, options), cwd=ROOT, env=env, capture_output=True,
                          text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"the {processes}-process run failed:\n{done.stderr[-3000:]}")
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    count = len(jobs.read_text().splitlines())
    if len(records) != count or any(r["status"] != "done" for r in records):
        raise SystemExit(f"the {processes}-process run left an incomplete manifest ({len(records)} of {count})")
    return {"processes": processes, "jobs": count, "wall_seconds": round(seconds, 2),
            "job_seconds": round(sum(r["seconds"] for r in records), 2)}


def main() -> int:
    """Run the batch with each process count over the same jobs; print a table and optionally write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=8, help=f"number of prompts, at most {len(PROMPTS)}")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--size", default="64")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cutn", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    options = ["--pipeline", "vqgan_clip", "--vqgan", "shapes-tiny", "--clip-model", "shapes-tiny", "--size",
               args.size, "--steps", str(args.steps), "--cutn", str(args.cutn), "--device", args.device]
    results = []
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        jobs = folder / "prompts.txt"
        jobs.write_text("".join(prompt + "\n" for prompt in PROMPTS[:args.jobs]))
        print(f"{'processes':>9} {'jobs':>5} {'wall s':>8} {'job s':>8} {'speed-up':>8}")
        for processes in args.processes:
            row = measure(processes, jobs, folder, options, args.threads)
            row["speed_up"] = round(results[0]["wall_seconds"] / row["wall_seconds"], 2) if results else 1.0
            results.append(row)
            print(f"{row['processes']:>9} {row['jobs']:>5} {row['wall_seconds']:>8.2f} {row['job_seconds']:>8.2f} "
                  f"{row['speed_up']:>8.2f}", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        settings = {key: value for key, value in vars(args).items() if key != "json"}
        Path(args.json).write_text(json.dumps({"machine": machine(), "settings": settings, "results": results},
                                              indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
