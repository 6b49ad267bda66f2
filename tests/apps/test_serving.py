"""Serving to others, without a server: logins and the exposure warning, the bounded line of runs and its busy
message, Stop per session (also while waiting), results pruning, the command line and the health line."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest
from PIL import Image

from apps.access import exposure_warning, is_loopback, read_credentials
from apps.gradio_app import build_parser, config_from, main
from apps.handlers import AppConfig, PipelineCache, WebApp
from apps.model_policy import SHIPPED_CLIPS
from apps.results import RUN_FOLDER, new_run_folder, prune_results
from apps.run_queue import RunQueue, ServerBusy
from guidance.errors import InvalidInputError
from pipelines.common import run_cli

PREVIEW, STATUS = 0, 1


# --- logins -----------------------------------------------------------------------------------------------------


def test_logins_come_from_auth_options_and_an_auth_file(tmp_path):
    (tmp_path / "logins.txt").write_text("# team\nana: s3cret:with:colons\n\nbo:pw\n")
    assert read_credentials(["me:pass"], tmp_path / "logins.txt") == [("me", "pass"), ("ana", " s3cret:with:colons"),
                                                                      ("bo", "pw")]
    assert read_credentials() == []


@pytest.mark.parametrize("auth, file_text, message", [
    (["nopassword"], None, "--auth: expected USER:PASS with a non-empty user and password"),
    ([":pw"], None, "--auth: expected USER:PASS"),
    ([], "bo\n", "logins.txt line 1: expected USER:PASS"),
    ([], "# nobody\n", "holds no USER:PASS line"),
])
def test_bad_logins_are_refused_in_one_line(tmp_path, auth, file_text, message):
    if file_text is not None:
        (tmp_path / "logins.txt").write_text(file_text)
    with pytest.raises(InvalidInputError, match=message):
        read_credentials(auth, tmp_path / "logins.txt" if file_text is not None else None)
    with pytest.raises(InvalidInputError, match="cannot read --auth-file"):
        read_credentials([], tmp_path / "missing.txt")


def test_a_server_reachable_from_other_machines_without_a_login_is_warned_about():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("myhost")
    assert exposure_warning("127.0.0.1", False, []) is None
    assert exposure_warning("0.0.0.0", False, [("a", "b")]) is None
    assert exposure_warning("0.0.0.0", False, []).startswith("warning: serving on 0.0.0.0, reachable from other "
                                                             "machines without a login")
    assert "gradio.live link (--share) without a login" in exposure_warning("127.0.0.1", True, [])
    assert exposure_warning("127.0.0.1", True, []).endswith("Add --auth USER:PASS or --auth-file FILE")


# --- the line of runs -----------------------------------------------------------------------------------------


def test_the_line_is_first_come_first_served_and_bounded():
    line = RunQueue(max_waiting=2)
    first, second, third = line.join(), line.join(), line.join()
    assert (line.running, line.waiting) == (True, 2)
    with pytest.raises(ServerBusy, match="^the server is busy: 2 runs are waiting; try again shortly$"):
        line.join()
    assert line.wait(first, 0) == 0 and line.wait(third, 0) == 2
    turns = []
    waiter = threading.Thread(target=lambda: turns.append(line.wait(third, 10)))
    waiter.start()
    line.leave(first)
    assert line.wait(second, 0) == 0
    line.leave(second)
    waiter.join(10)
    assert turns == [0] and line.waiting == 0
    line.leave(third)
    assert not line.running
    with pytest.raises(ServerBusy, match="^the server is busy with another run; try again shortly$"):
        busy = RunQueue(max_waiting=0)
        busy.join()
        busy.join()


def request(session: str) -> SimpleNamespace:
    """A stand-in for gr.Request: the handlers only read the session hash."""
    return SimpleNamespace(session_hash=session)


def generate(app: WebApp, session: str, steps: int = 2):
    """A tiny text-to-image request on the shipped models (a generator of outputs)."""
    return app.generate("a red circle", "", "vqgan_clip", "shapes-tiny", ["shapes-tiny"], "32", steps, 2, 1, 1, False,
                        None, None, None, None, None, None, None, None, None, "fp32", [], request=request(session))


def until_preview(handler) -> None:
    """Advance a handler until its run has streamed an image (it then holds the turn)."""
    for outputs in handler:
        if isinstance(outputs[PREVIEW], Image.Image):
            return
    raise AssertionError("the run ended without a preview")


@pytest.mark.slow
def test_a_full_line_answers_busy_a_waiting_run_can_be_stopped_and_stop_is_per_session(tmp_path):
    app = WebApp(AppConfig(device="cpu", max_size=64, max_queue=1, output_dir=tmp_path), PipelineCache())
    running = generate(app, "alice", steps=400)
    until_preview(running)
    waiting = generate(app, "bob")
    assert next(waiting)[STATUS] == "Waiting for the server: 1 run ahead…"
    assert app.health()["waiting"] == 1 and "1 of at most 1 runs waiting" in app.status_line()
    with pytest.raises(gr.Error) as busy:
        list(generate(app, "carol"))
    assert busy.value.message == "the server is busy: 1 run is waiting; try again shortly"
    app.stop(request("carol"))  # carol has no run: nothing happens to the others
    app.stop(request("bob"))  # bob's waiting run ends without running
    assert [outputs[STATUS] for outputs in waiting] == ["Stopped before it started."]
    app.stop(request("alice"))
    final = list(running)[-1]
    assert final[STATUS].startswith("Stopped after")
    assert not app.health()["running"] and "Done: 2 steps" in list(generate(app, "carol"))[-1][STATUS]


# --- results on disk ------------------------------------------------------------------------------------------


def make_run(output_dir: Path, age_s: float, size: int = 1000) -> Path:
    """A run folder holding one file of `size` bytes, `age_s` seconds old."""
    folder = new_run_folder(output_dir)
    while folder.exists():
        folder = new_run_folder(output_dir)
    folder.mkdir(parents=True)
    (folder / "image.png").write_bytes(b"x" * size)
    stamp = time.time() - age_s
    os.utime(folder, (stamp, stamp))
    return folder


def test_the_oldest_results_are_removed_beyond_the_limits_and_nothing_else(tmp_path):
    runs = [make_run(tmp_path, age) for age in (50, 40, 30, 20, 10)]
    (tmp_path / "notes.txt").write_text("the operator's")
    (tmp_path / "keep-me").mkdir()
    assert RUN_FOLDER.fullmatch(runs[0].name)
    assert prune_results(tmp_path) == []
    assert prune_results(tmp_path, keep=3) == runs[:2]
    assert prune_results(tmp_path, keep_mb=0.0025) == [runs[2]]  # 2 runs of 1000 bytes fit in 2500 bytes
    assert prune_results(tmp_path, keep_mb=0.0001) == [runs[3]]  # the newest is always kept
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([runs[4].name, "keep-me", "notes.txt"])


def test_the_app_keeps_only_the_newest_results(tmp_path):
    app = WebApp(AppConfig(device="cpu", max_size=64, keep_results=2, output_dir=tmp_path), PipelineCache())
    finals = [list(generate(app, "keeper"))[-1] for _ in range(3)]
    kept = [path for path in tmp_path.iterdir() if RUN_FOLDER.fullmatch(path.name)]
    assert len(kept) == 2 and not Path(finals[0][3][0]).exists() and Path(finals[2][3][0]).exists()
    assert finals[2][2] == [finals[2][3][0]]  # the gallery shows only results that still exist


# --- the command line -----------------------------------------------------------------------------------------


def test_the_command_line_builds_the_operators_settings(tmp_path):
    (tmp_path / "models").mkdir()
    args = build_parser().parse_args(["--models", "clip=ViT-B-32:openai", "--allow-custom-models", "--model-dir",
                                      str(tmp_path / "models"), "--max-steps", "50", "--max-cutn", "8",
                                      "--max-num-images", "2", "--max-queue", "3", "--keep-results", "10",
                                      "--keep-results-mb", "500", "--output-dir", str(tmp_path / "out")])
    config = config_from(args)
    assert (config.max_steps, config.max_cutn, config.max_num_images, config.max_queue) == (50, 8, 2, 3)
    assert (config.keep_results, config.keep_results_mb) == (10, 500.0)
    assert config.models.choices("clip") == [*SHIPPED_CLIPS, "ViT-B-32:openai"]
    assert config.models.allow_custom and config.models.model_dir == tmp_path / "models"
    defaults = build_parser().parse_args([])
    assert (defaults.auth, defaults.auth_file, defaults.models, defaults.allow_custom_models) == ([], None, [], False)


@pytest.mark.parametrize("argv, message", [
    (["--models", "vqgan=x"], "error: --models: unknown model kind 'vqgan'"),
    (["--auth", "nopassword"], "error: --auth: expected USER:PASS"),
    (["--max-queue", "-1"], "error: --max-queue must be 0 or more"),
    (["--model-dir", "/no/such/folder"], "error: --model-dir /no/such/folder is not a folder"),
    (["--keep-results-mb", "0"], "error: --keep-results-mb must be more than 0"),
])
def test_bad_settings_exit_2_with_one_line(capsys, argv, message):
    assert run_cli(main, ["--device", "cpu", *argv]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(message) and "\n" not in error


def test_model_and_output_folders_must_not_overlap(tmp_path, capsys):
    (tmp_path / "results").mkdir()
    assert run_cli(main, ["--device", "cpu", "--model-dir", str(tmp_path), "--output-dir",
                          str(tmp_path / "results")]) == 2
    assert "overlap, so uploads could be loaded as models; keep them apart" in capsys.readouterr().err


def test_errors_do_not_show_where_the_server_keeps_results(tmp_path):
    def loader(*key):
        raise InvalidInputError(f"cannot read {tmp_path / 'results' / 'run' / 'init.png'}: broken")

    app = WebApp(AppConfig(device="cpu", output_dir=tmp_path / "results"), PipelineCache(loader=loader))
    with pytest.raises(gr.Error) as caught:
        list(generate(app, "private"))
    assert caught.value.message == "cannot read results/run/init.png: broken"


def test_health_names_the_device_the_line_and_the_models_loaded(tmp_path):
    loads = []
    app = WebApp(AppConfig(device="cpu", output_dir=tmp_path, max_queue=5),
                 PipelineCache(loader=lambda *key: loads.append(key) or object()))
    assert app.health() == {"status": "ok", "device": "cpu", "running": False, "waiting": 0, "max_queue": 5,
                            "models_loaded": []}
    app.cache.get("vqgan_clip", "shapes-tiny", ["shapes-tiny"], app.device)
    assert app.health()["models_loaded"] == ["vqgan_clip shapes-tiny (CLIP shapes-tiny) on cpu"]
    assert app.status_line() == ("Server: cpu, idle, 0 of at most 5 runs waiting. Models loaded: vqgan_clip "
                                 "shapes-tiny (CLIP shapes-tiny) on cpu.")


class LaunchSpy:
    """Stands in for the built page: records how main launches it, and Gradio's cache folder at that moment."""

    def __init__(self) -> None:
        self.launches: list[dict] = []

    def build(self, config: AppConfig) -> LaunchSpy:
        self.cache_dir = os.environ.get("GRADIO_TEMP_DIR")
        self.config = config
        return self

    def launch(self, **settings) -> None:
        self.launches.append(settings)


@pytest.mark.parametrize("argv, warned, auth", [
    (["--host", "0.0.0.0"], True, None),
    (["--share"], True, None),
    (["--host", "0.0.0.0", "--auth", "ana:pw", "--max-queue", "100"], False, [("ana", "pw")]),
    ([], False, None),
])
def test_main_launches_with_logins_the_output_folder_only_and_warns_when_exposed(tmp_path, monkeypatch, capsys, argv,
                                                                                 warned, auth):
    spy = LaunchSpy()
    monkeypatch.setattr("apps.gradio_app.build_app", spy.build)
    monkeypatch.delenv("GRADIO_TEMP_DIR", raising=False)
    assert main(["--device", "cpu", "--output-dir", str(tmp_path / "out"), *argv]) == 0
    (settings,) = spy.launches
    assert settings["auth"] == auth and settings["allowed_paths"] == [str(tmp_path / "out")]
    assert settings["max_threads"] == max(40, spy.config.max_queue + 18)  # waiting runs hold a thread each
    assert spy.cache_dir == str(tmp_path / "out" / "gradio-cache") and "GRADIO_TEMP_DIR" not in os.environ
    assert ("without a login" in capsys.readouterr().err) == warned
