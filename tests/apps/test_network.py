"""The served app as visitors reach it: `python -m apps.gradio_app` with a login on a free localhost port, and
separate gradio_client clients (sessions). A load test, logins, limits past the sliders, models and paths typed
by a client, file routes, uploads, and Stop per session.

The load test's figures (requests, outcomes, wall time, the server's peak RSS) are printed (pytest -s).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from guidance.images import read_recipe

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError, AuthenticationError  # noqa: E402

pytestmark = pytest.mark.slow

LOGIN = ("tester", "s3cret")
MAX_STEPS, MAX_NUM_IMAGES, MAX_QUEUE = 60, 2, 2
START_TIMEOUT_S = 240  # importing torch and gradio on a busy two-core machine
SERVER_RSS_BOUND_MB = 1500  # the server's peak resident memory through these tests (measured about 1 GB)
CLIENTS = 8
PREVIEW, STATUS, GALLERY, FILES, SEED = range(5)
BUSY = ("the server is busy: ", "the server is busy with another run")


def free_port() -> int:
    """A localhost port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """The app in its own process (so its memory is its own), and where it keeps results."""

    def __init__(self, output_dir: Path):
        self.output_dir = output_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        argv = [sys.executable, "-m", "apps.gradio_app", "--port", str(self.port), "--device", "cpu",
                "--auth", ":".join(LOGIN), "--max-queue", str(MAX_QUEUE), "--max-steps", str(MAX_STEPS),
                "--max-num-images", str(MAX_NUM_IMAGES), "--max-size", "64", "--max-upload-pixels", "1000000",
                "--keep-results", "50", "--output-dir", str(output_dir)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.log = (output_dir.parent / "server.log").open("w")
        self.process = subprocess.Popen(argv, cwd=Path(__file__).parents[2], env=env, stdout=self.log,
                                        stderr=subprocess.STDOUT)

    def wait_until_serving(self) -> None:
        """Poll the page until it answers (the login page, as a login is required)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the server exited: {Path(self.log.name).read_text()[-2000:]}")
            try:
                if httpx.get(self.url, timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise AssertionError(f"the server did not start in {START_TIMEOUT_S} s")

    def peak_rss_mb(self) -> float:
        """The server process's peak resident memory so far (VmHWM)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmHWM in /proc")

    def stop(self) -> None:
        """End the server process."""
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=20)
        self.log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    """The served app, logged-in visitors only."""
    running = Server(tmp_path_factory.mktemp("served") / "results")
    try:
        running.wait_until_serving()
        yield running
    finally:
        running.stop()


def visitor(server: Server) -> Client:
    """A logged-in visitor: its own client, so its own session. Files stay on the server (its paths and URLs
    are returned)."""
    return Client(server.url, auth=LOGIN, verbose=False, download_files=False)


def served_path(files: list[Any]) -> Path:
    """Where the server keeps the first file of a File output."""
    return Path(files[0]["path"])


def generate_args(**overrides: Any) -> dict[str, Any]:
    """A tiny text-to-image request on the shipped models."""
    return {"prompt": "a red circle", "negative": "", "method": "vqgan_clip", "model": "shapes-tiny",
            "clip_models": ["shapes-tiny"], "size": "32", "steps": 3, "cutn": 2, "num_images": 1, "seed": 1,
            "random_seed": False, "lr": None, "cut_pow": None, "augment": None, "clip_scale": None, "tv_scale": None,
            "range_scale": None, "cfg_scale": None, "sampler_steps": None, "spectrum_decay": None, "precision": "fp32",
            **overrides}


def refusal(client: Client, api_name: str, **args: Any) -> str:
    """The one-line message a request is refused with."""
    with pytest.raises(AppError) as caught:
        client.predict(**args, api_name=api_name)
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_a_login_is_required_and_admits_the_right_visitor(server):
    with pytest.raises(AuthenticationError, match="credentials were not provided"):
        Client(server.url, verbose=False)
    with pytest.raises(ValueError, match="Could not login"):  # gradio_client's error for a wrong password
        Client(server.url, auth=("tester", "wrong"), verbose=False)
    health = visitor(server).predict(api_name="/health")
    assert health["status"] == "ok" and health["device"] == "cpu" and health["max_queue"] == MAX_QUEUE


def test_load_of_concurrent_visitors_each_get_an_image_or_a_busy_line(server):
    clients = [visitor(server) for _ in range(CLIENTS)]
    start = threading.Barrier(CLIENTS)
    outcomes: list[tuple[int, str, Any]] = []

    def run(index: int, client: Client) -> None:
        start.wait()
        try:
            outcomes.append((index, "image", client.predict(**generate_args(seed=100 + index, steps=20),
                                                            api_name="/generate")))
        except AppError as error:
            outcomes.append((index, "refused", str(error)))

    threads = [threading.Thread(target=run, args=pair) for pair in enumerate(clients)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    wall = time.monotonic() - began
    images = [(index, result) for index, kind, result in outcomes if kind == "image"]
    refused = [message for _, kind, message in outcomes if kind == "refused"]
    peak = server.peak_rss_mb()
    print(f"\nload test: {CLIENTS} concurrent clients, {len(images)} images, {len(refused)} busy, "
          f"{wall:.1f} s wall, server peak RSS {peak:.0f} MB")
    assert len(outcomes) == CLIENTS
    assert all(message.startswith(BUSY) and message.endswith("try again shortly") for message in refused), refused
    assert images and refused  # the line holds MAX_QUEUE runs behind the running one
    for index, result in images:  # each got its own run, not another's
        path = served_path(result[FILES])
        assert "Done: 20 steps" in result[STATUS] and read_recipe(path)["seed"] == 100 + index
        assert path.is_relative_to(server.output_dir)
    assert peak < SERVER_RSS_BOUND_MB
    after = visitor(server)
    assert "Done: 3 steps" in after.predict(**generate_args(), api_name="/generate")[STATUS]
    assert after.predict(api_name="/health")["waiting"] == 0


@pytest.mark.parametrize("overrides, message", [
    ({"steps": 5000}, f"Value 5000 is greater than maximum value {MAX_STEPS}"),
    ({"cutn": 1000}, "Value 1000 is greater than maximum value 128"),
    ({"num_images": 50}, f"Value 50 is greater than maximum value {MAX_NUM_IMAGES}"),
    ({"size": "512"}, "size 512x512 is larger than this server allows (64 pixels a side)"),
    ({"model": "/etc/passwd"}, "VQGAN '/etc/passwd' is not offered by this server"),
    ({"clip_models": ["ViT-L-14"]}, "CLIP model 'ViT-L-14' is not offered by this server"),
    ({"method": "pixels_clip", "model": "rgb"}, "Parameterization 'rgb' is not offered by this server"),
])
def test_limits_and_model_lists_hold_whatever_a_client_sends(server, overrides, message):
    assert message in refusal(visitor(server), "/generate", **generate_args(**overrides))


def test_file_routes_serve_results_to_visitors_and_nothing_outside_the_output_folder(server):
    client = visitor(server)
    result = str(served_path(client.predict(**generate_args(), api_name="/generate")[FILES]))
    route = f"{server.url}gradio_api/file="
    assert httpx.get(route + result, cookies=client.cookies).content[:8] == b"\x89PNG\r\n\x1a\n"
    assert httpx.get(route + result).status_code == 401  # not logged in
    project = Path(__file__).parents[2]
    for path in ("/etc/passwd", str(project / "README.md"), str(project / "apps" / "gradio_app.py"),
                 f"{server.output_dir}/../server.log"):
        response = httpx.get(route + path, cookies=client.cookies)
        assert response.status_code in (403, 404) and "root:" not in response.text


def edit_args(photo: Path) -> dict[str, Any]:
    """An init-image edit of an uploaded photo."""
    return {"editor": {"background": handle_file(str(photo)), "layers": [], "composite": None, "id": None},
            "mask_file": None, "target": "a blue circle", "source": "", "edit_method": "init-image edit",
            "method": "vqgan_clip", "model": "shapes-tiny", "clip_models": ["shapes-tiny"], "steps": 2, "cutn": 2,
            "edit_strength": 0.5, "seed": 1, "random_seed": False, "lr": None, "cut_pow": None, "augment": None,
            "clip_scale": None, "tv_scale": None, "range_scale": None, "cfg_scale": None, "sampler_steps": None,
            "spectrum_decay": None, "precision": "fp32"}


def test_a_bomb_and_a_non_image_upload_are_refused_in_one_line(server, tmp_path, png_bomb):
    client = visitor(server)
    rss_before = server.peak_rss_mb()
    message = refusal(client, "/edit", **edit_args(png_bomb("bomb.png", 40_000)))
    assert message.startswith("image 'bomb.png'") and "(1600 Mpx), over the limit of 1 Mpx" in message
    assert server.peak_rss_mb() - rss_before < 100  # refused from the header: nothing was decoded
    (tmp_path / "notes.png").write_text("not an image")
    message = refusal(client, "/edit", **edit_args(tmp_path / "notes.png"))
    assert message.startswith("cannot read image 'notes.png': not an image format PIL knows")
    from PIL import Image
    Image.new("RGB", (48, 48), (200, 20, 20)).save(tmp_path / "photo.png")
    assert "Done: 2 steps" in client.predict(**edit_args(tmp_path / "photo.png"), api_name="/edit")[STATUS]


def wait_for_progress(job: Any, timeout_s: float = 120) -> None:
    """Wait until a submitted run has streamed its first outputs."""
    deadline = time.monotonic() + timeout_s
    while not any(output and output[PREVIEW] for output in job.outputs()):
        assert time.monotonic() < deadline and not job.done(), "the run streamed no image"
        time.sleep(0.2)


def test_stop_belongs_to_its_session(server):
    owner, other = visitor(server), visitor(server)
    run = owner.submit(**generate_args(steps=MAX_STEPS), api_name="/generate")
    wait_for_progress(run)
    other.predict(api_name="/stop")  # another visitor's Stop: the run goes on
    assert f"Done: {MAX_STEPS} steps" in run.result(timeout=300)[STATUS]
    run = owner.submit(**generate_args(steps=MAX_STEPS), api_name="/generate")
    wait_for_progress(run)
    owner.predict(api_name="/stop")  # its own: it ends early and keeps its image
    final = run.result(timeout=300)
    assert final[STATUS].startswith("Stopped after")
    assert read_recipe(served_path(final[FILES]))["steps_done"] < MAX_STEPS
