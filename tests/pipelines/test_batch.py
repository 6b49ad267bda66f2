"""Batch jobs (pipelines.batch): JOBS files and their errors, seeds, the manifest, resuming, failures, recipes that
reproduce, an interrupted run, and two processes under `accelerate launch` (CPU, gloo)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from guidance import InvalidInputError, read_recipe
from pipelines.batch import (MANIFEST, ManifestLog, derive_seed, main, merge_manifest, pipeline_class,
                             pipeline_options, read_jobs, read_records)
from pipelines.common import run_cli
from pipelines.registry import get_pipeline_spec

REPO = Path(__file__).resolve().parents[2]
# The shipped shapes models at the smallest useful settings: a job takes a fraction of a second.
TINY = ["--pipeline", "vqgan_clip", "--vqgan", "shapes-tiny", "--clip-model", "shapes-tiny", "--size", "32",
        "--steps", "2", "--cutn", "2", "--device", "cpu"]
PROMPTS = ["a red circle", "a blue square", "a green triangle", "a yellow star", "a white circle", "a black square"]


@pytest.fixture(scope="module")
def options():
    """The batch options of VQGAN-CLIP."""
    spec = get_pipeline_spec("vqgan_clip")
    return pipeline_options(pipeline_class(spec), spec)


def write(path: Path, lines: list[str]) -> Path:
    """A JOBS file with these lines."""
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def batch(jobs: Path, out: Path, *extra: str) -> int:
    """Run the batch CLI in this process; its exit code."""
    return run_cli(main, [str(jobs), "--output-dir", str(out), *TINY, *extra])


def manifest(out: Path) -> list[dict]:
    """The merged manifest's records."""
    return [json.loads(line) for line in (out / MANIFEST).read_text().splitlines()]


def pixels(path: Path) -> np.ndarray:
    """A PNG's RGB pixels."""
    return np.asarray(Image.open(path).convert("RGB"))


def env() -> dict[str, str]:
    """The environment of subprocesses: one thread each (a busy 2-core machine), the repository importable."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


# --- JOBS files ---------------------------------------------------------------------------------------------------


def test_a_prompts_file_gives_one_job_per_prompt_line(tmp_path, options):
    jobs = read_jobs(write(tmp_path / "p.txt", ["a red circle", "", "# a comment", "  a blue square  "]),
                     "vqgan_clip", options)
    assert [(j.id, j.line, j.prompt) for j in jobs] == [("line-1", 1, "a red circle"), ("line-4", 4, "a blue square")]


def test_a_jsonl_job_takes_options_by_call_name_or_flag_name(tmp_path, options):
    path = write(tmp_path / "j.jsonl", ['{"prompt": "a red circle", "id": "red", "seed": 5, "steps": "3", '
                                        '"cut-pow": 2, "image_prompt": "x.png", "size": 48, "lr": null}'])
    job = read_jobs(path, "vqgan_clip", options)[0]
    assert (job.id, job.seed, job.prompt) == ("red", 5, "a red circle")
    assert job.options == {"steps": 3, "cut_pow": 2.0, "image_prompts": ["x.png"], "size": "48", "lr": None}


@pytest.mark.parametrize("name, lines, message", [
    ("empty.txt", [], r"empty.txt has no jobs"),
    ("blank.jsonl", ["", "   "], r"blank.jsonl has no jobs"),
    ("bad.jsonl", ['{"prompt": "a"}', '{"prompt": "b",}'], r"bad.jsonl:2: malformed JSON"),
    ("list.jsonl", ['["a red circle"]'], r"list.jsonl:1: a job is a JSON object"),
    ("unknown.jsonl", ['{"prompt": "a"}', "", '{"prompt": "b", "stpes": 3}'],
     r"unknown.jsonl:3: unknown option 'stpes'; did you mean 'steps'\?"),
    ("model.jsonl", ['{"prompt": "a", "vqgan": "other"}'], r"model.jsonl:1: unknown option 'vqgan'"),
    ("clip.jsonl", ['{"prompt": "a", "clip_model": "ViT-B-32"}'], r"clip.jsonl:1: 'clip_model' is set for the whole"),
    ("pipeline.jsonl", ['{"prompt": "a", "pipeline": "pixels_clip"}'], r"pipeline.jsonl:1: this job names another"),
    ("type.jsonl", ['{"prompt": "a", "steps": 2.5}'], r"type.jsonl:1: steps takes a int, got 2.5"),
    ("id.jsonl", ['{"prompt": "a", "id": "../x"}'], r"id.jsonl:1: id \"../x\" is not a file name"),
    ("twice.jsonl", ['{"id": "a"}', '{"id": "a"}'], r"twice.jsonl:2: id 'a' is already used on line 1"),
    ("seed.jsonl", ['{"prompt": "a", "seed": -1}'], r"seed.jsonl:1: seed -1 is out of range"),
    ("prompt.jsonl", ['{"prompt": 3}'], r"prompt.jsonl:1: prompt must be a string"),
])
def test_bad_jobs_files_name_the_file_and_line(tmp_path, options, name, lines, message):
    with pytest.raises(InvalidInputError, match=message):
        read_jobs(write(tmp_path / name, lines), "vqgan_clip", options)


@pytest.mark.parametrize("argv, message", [
    (["--pipeline", "nope"], "unknown pipeline 'nope'; choose one of vqgan_clip"),
    (["--pipeline", "vqgan_clip", "--vqgan", "shapes-tiny", "--stpes", "3"], "unrecognized arguments: --stpes 3"),
    (["--pipeline", "vqgan_clip"], "the following arguments are required: --vqgan"),
    ([], "the following arguments are required: --pipeline"),
])
def test_bad_command_lines_exit_2_with_one_line(tmp_path, capsys, argv, message):
    jobs = write(tmp_path / "p.txt", ["a red circle"])
    try:
        code = run_cli(main, [str(jobs), "--output-dir", str(tmp_path / "out"), *argv])
    except SystemExit as exit_info:  # the parser's own exit
        code = exit_info.code
    assert code == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1, error


@pytest.mark.parametrize("lines", [[], ['{"prompt": "a"}', "{oops"]])
def test_bad_jobs_exit_2_before_any_model_loads(tmp_path, capsys, lines):
    jobs = write(tmp_path / ("j.jsonl" if lines else "j.txt"), lines)
    assert run_cli(main, [str(jobs), "--output-dir", str(tmp_path / "out"), "--pipeline", "vqgan_clip",
                          "--vqgan", "no-such-model"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and str(jobs) in error and len(error.splitlines()) == 1, error


def test_derived_seeds_are_deterministic_in_range_and_differ_by_job_and_base():
    seeds = {derive_seed(base, f"line-{n}") for base in (0, 1) for n in range(100)}
    assert len(seeds) == 200 and all(0 <= s < 2**31 for s in seeds)
    assert derive_seed(7, "red") == derive_seed(7, "red")


# --- the manifest -------------------------------------------------------------------------------------------------


def test_the_manifest_survives_a_cut_last_line_and_merges_the_latest_record_per_job(tmp_path):
    (tmp_path / MANIFEST).write_text('{"id": "a", "status": "failed", "finished": 1}\n{"id": "b", "sta')
    log = ManifestLog(tmp_path / "manifest.rank-1.jsonl")
    log.append({"id": "b", "status": "done", "finished": 3})
    log.close()
    log = ManifestLog(tmp_path / MANIFEST)  # ends the cut line before appending
    log.append({"id": "a", "status": "done", "finished": 2})
    log.close()
    assert {k: r["status"] for k, r in read_records(tmp_path).items()} == {"a": "done", "b": "done"}
    merge_manifest(tmp_path, ["b", "a"])
    assert [(r["id"], r["finished"]) for r in manifest(tmp_path)] == [("b", 3), ("a", 2)]


# --- runs ---------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_failing_job_is_recorded_the_others_go_on_and_a_rerun_redoes_only_what_is_not_done(tmp_path, capsys):
    jobs = write(tmp_path / "j.jsonl", ['{"prompt": "a red circle"}', '{"prompt": "a blue square", "steps": 0}',
                                        '{"prompt": "a green star", "id": "star", "seed": 3, "cutn": 1}'])
    out = tmp_path / "out"
    assert batch(jobs, out) == 1  # some job failed
    records = {r["id"]: r for r in manifest(out)}
    assert records["line-2"]["status"] == "failed" and "--steps" in records["line-2"]["error"]
    assert records["line-1"]["status"] == records["star"]["status"] == "done"
    assert records["star"]["seed"] == 3 and records["line-1"]["seed"] == derive_seed(0, "line-1")
    assert read_recipe(out / "star.png")["cutn"] == 1 and read_recipe(out / "line-1.png")["cutn"] == 2
    before = {name: (out / name).stat().st_mtime_ns for name in ("line-1.png", "star.png")}
    capsys.readouterr()

    write(jobs, ['{"prompt": "a red circle"}', '{"prompt": "a blue square", "steps": 1}',
                 '{"prompt": "a green star", "id": "star", "seed": 4, "cutn": 1}'])  # fixed one, changed another
    assert batch(jobs, out) == 0
    assert "2 done, 0 failed, 1 already done" in capsys.readouterr().err
    records = {r["id"]: r for r in manifest(out)}
    assert len(manifest(out)) == 3 and all(r["status"] == "done" for r in records.values())
    assert (out / "line-1.png").stat().st_mtime_ns == before["line-1.png"], "a done job was redone"
    assert (out / "star.png").stat().st_mtime_ns != before["star.png"] and records["star"]["seed"] == 4


@pytest.mark.slow
def test_each_image_is_reproduced_by_its_recipe_command(tmp_path):
    jobs = write(tmp_path / "j.jsonl", ['{"prompt": "a red circle"}',
                                        '{"prompt": "-a blue square", "id": "blue", "steps": 3, "cut_pow": 0.5}'])
    out = tmp_path / "out"
    assert batch(jobs, out) == 0
    for name in ("line-1.png", "blue.png"):
        argv = shlex.split(read_recipe(out / name)["command"])
        assert argv[:3] == ["python", "-m", "pipelines.vqgan_clip"]
        again = tmp_path / f"again-{name}"
        argv[argv.index("--output") + 1] = str(again)
        result = subprocess.run([sys.executable, *argv[1:]], capture_output=True, text=True, cwd=REPO, env=env(),
                                timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        assert np.array_equal(pixels(again), pixels(out / name)), name


def test_a_job_with_num_images_writes_its_images_listed_in_the_manifest_and_switches_pass_through(tmp_path):
    jobs = write(tmp_path / "j.jsonl", ['{"prompt": "a red circle", "id": "two", "num_images": 2, "best_step": true}'])
    out = tmp_path / "out"
    assert batch(jobs, out) == 0
    assert manifest(out)[0]["files"] == ["two-1.png", "two-2.png"]
    recipes = [read_recipe(out / name) for name in ("two-1.png", "two-2.png")]
    assert [r["index"] for r in recipes] == [1, 2] and all(r["best_step"] is True for r in recipes)
    argv = shlex.split(recipes[1]["command"])
    assert "--best-step" in argv and argv[argv.index("--num-images") + 1] == "2"


def wait_for_records(out: Path, count: int, process: subprocess.Popen, timeout: float = 240) -> None:
    """Wait until the manifest holds `count` records (or the process ends, or the timeout passes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if (out / MANIFEST).is_file() and len((out / MANIFEST).read_text().splitlines()) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"the run did not record {count} jobs in time")


@pytest.mark.slow
def test_a_killed_run_resumes_without_redoing_finished_jobs(tmp_path):
    jobs = write(tmp_path / "p.txt", PROMPTS)
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "pipelines.batch", str(jobs), "--output-dir", str(out), *TINY, "--steps", "40"]
    process = subprocess.Popen(argv, cwd=REPO, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_records(out, 2, process)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    records = read_records(out).values()
    assert all(r["status"] == "done" for r in records), [r.get("error") for r in records]
    finished = {r["id"]: (out / r["files"][0]).stat().st_mtime_ns for r in records}
    assert 2 <= len(finished) < len(PROMPTS), "kill the run midway"
    assert not list(out.glob("*.partial.png"))

    result = subprocess.run(argv, cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    records = manifest(out)
    assert sorted(r["id"] for r in records) == [f"line-{n}" for n in range(1, 7)]
    assert all(r["status"] == "done" for r in records)
    assert all((out / r["files"][0]).stat().st_mtime_ns == finished[r["id"]] for r in records if r["id"] in finished)
    assert f"{len(PROMPTS) - len(finished)} done, 0 failed, {len(finished)} already done" in result.stderr
    assert not list(out.glob(".*.tmp.png")) and len(list(out.glob("*.png"))) == len(PROMPTS)


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("accelerate", path=str(Path(sys.executable).parent)) is None,
                    reason="accelerate's launcher is not installed beside this Python")
def test_two_accelerate_processes_make_every_image_exactly_once_and_a_complete_manifest(tmp_path):
    jobs = write(tmp_path / "p.txt", PROMPTS)
    out = tmp_path / "out"
    launcher = str(Path(sys.executable).parent / "accelerate")
    # --multi_gpu starts torchrun's N processes (they use gloo on the CPU); accelerate's --cpu would start one
    argv = [launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
            "--dynamo_backend", "no", "--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port()),
            "-m", "pipelines.batch", str(jobs), "--output-dir", str(out), *TINY]
    result = subprocess.run(argv, cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    parts = [[json.loads(line)["id"] for line in (out / f"manifest.rank-{k}.jsonl").read_text().splitlines()]
             for k in (0, 1)]
    assert sorted(parts[0] + parts[1]) == sorted(f"line-{n}" for n in range(1, 7)), "each job done exactly once"
    assert len(parts[0]) == len(parts[1]) == 3
    records = manifest(out)
    assert [r["id"] for r in records] == [f"line-{n}" for n in range(1, 7)]
    assert all(r["status"] == "done" and (out / r["files"][0]).is_file() for r in records)
    assert len(list(out.glob("*.png"))) == 6
    assert {read_recipe(out / r["files"][0])["seed"] for r in records} == {derive_seed(0, r["id"]) for r in records}
