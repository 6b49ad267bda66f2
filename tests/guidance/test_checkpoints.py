"""Safe checkpoint reading/writing and the download cache (no network: local server and unreachable hosts only)."""

from __future__ import annotations

import functools
import hashlib
import io
import os
import pickle
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from guidance.checkpoints import (
    InertObject,
    RestrictedPickle,
    RestrictedUnpickler,
    cache_dir,
    cached_download,
    load_state_dict,
    save_state_dict,
)
from guidance.errors import InvalidInputError, ModelUnavailableError

UNREACHABLE = "https://127.0.0.1:9/x.ckpt"


def spring_trap(marker: str) -> None:
    """What a malicious pickle would run: leaves a file behind."""
    Path(marker).write_text("sprung")


class Trap:
    """A callback-like object whose unpickling calls `spring_trap`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return spring_trap, (str(self.marker),)


class HyperParameters:
    """Stands in for omegaconf/Lightning objects pickled by state (NEWOBJ + BUILD)."""

    def __init__(self) -> None:
        self.lr = 4.5e-6
        self.nested = {"ddconfig": [1, 2]}


class Evil:
    """The classic pickle exploit."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the cache at a temp dir and make sure the hub is not forced offline unless a test says so."""
    monkeypatch.setenv("CLIP_GUIDANCE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return tmp_path / "cache"


def sample_state() -> dict[str, torch.Tensor]:
    """A small state dict with a shared tensor and a non-contiguous one."""
    weight = torch.randn(4, 3)
    return {"a.weight": weight, "a.tied": weight, "b.t": torch.randn(3, 5).t(), "c.bias": torch.arange(3.0)}


def lightning_checkpoint(path: Path, state: dict[str, torch.Tensor], marker: Path, zipped: bool = True) -> None:
    """Write a file shaped like a taming/Lightning .ckpt, with objects the weights-only loader refuses."""
    state = {**state, "loss.discriminator.main.0.weight": torch.randn(2, 2)}
    torch.save({"state_dict": state, "epoch": 1, "global_step": np.int64(7),
                "callbacks": {Trap: Trap(marker), "hparams": HyperParameters()},
                "optimizer_states": [{"lr": np.float64(0.5)}]}, path, _use_new_zipfile_serialization=zipped)


def assert_same(left: dict[str, torch.Tensor], right: dict[str, torch.Tensor]) -> None:
    """Same keys, same values."""
    assert left.keys() == right.keys()
    for key in left:
        torch.testing.assert_close(left[key], right[key], rtol=0, atol=0)


def test_cache_dir_honours_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIP_GUIDANCE_CACHE", str(tmp_path / "elsewhere"))
    assert cache_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("CLIP_GUIDANCE_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "clip-guidance"


def test_safetensors_round_trip_with_shared_and_strided_tensors(tmp_path: Path) -> None:
    state = sample_state()
    save_state_dict(state, tmp_path / "w.safetensors", {"note": "hello"})
    loaded, metadata = load_state_dict(tmp_path / "w.safetensors")
    assert_same(loaded, state)
    assert metadata["note"] == "hello"
    assert not (tmp_path / "w.safetensors.part").exists()


def test_torch_file_unwraps_model_container_and_module_prefix(tmp_path: Path) -> None:
    state = {"x.weight": torch.randn(2, 2), "y.bias": torch.randn(2)}
    torch.save({"model": {f"module.{key}": value for key, value in state.items()}}, tmp_path / "w.pt")
    loaded, metadata = load_state_dict(tmp_path / "w.pt")
    assert_same(loaded, state)
    assert metadata == {}


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_lightning_checkpoint_loads_without_running_pickled_code(tmp_path: Path, zipped: bool) -> None:
    state, marker = {"q.weight": torch.randn(3, 3)}, tmp_path / "sprung"
    lightning_checkpoint(tmp_path / "last.ckpt", state, marker, zipped)
    loaded, _ = load_state_dict(tmp_path / "last.ckpt")
    assert not marker.exists()
    assert loaded.keys() == {"q.weight", "loss.discriminator.main.0.weight"}
    torch.testing.assert_close(loaded["q.weight"], state["q.weight"])


def test_the_trap_is_real_when_pickle_is_allowed(tmp_path: Path) -> None:
    marker = tmp_path / "sprung"
    lightning_checkpoint(tmp_path / "last.ckpt", {"q.weight": torch.randn(3, 3)}, marker)
    load_state_dict(tmp_path / "last.ckpt", allow_pickle=True)
    assert marker.read_text() == "sprung"


def test_restricted_unpickler_never_runs_os_system(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    loaded = RestrictedPickle.load(io.BytesIO(pickle.dumps({"payload": Evil(marker)})))
    assert isinstance(loaded["payload"], InertObject)
    assert not marker.exists()
    for module, name in (("os", "system"), ("posix", "system"), ("builtins", "eval"), ("builtins", "getattr")):
        resolved = RestrictedUnpickler(io.BytesIO(b"")).find_class(module, name)
        assert issubclass(resolved, InertObject)


def test_torch_file_with_exploit_is_refused_as_state_dict_and_stays_inert(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {"w": torch.ones(1), "evil": Evil(marker)}}, tmp_path / "bad.ckpt")
    with pytest.raises(InvalidInputError, match="not a tensor"):
        load_state_dict(tmp_path / "bad.ckpt")
    assert not marker.exists()


def test_missing_file_is_model_unavailable(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError) as caught:
        load_state_dict(tmp_path / "nope.ckpt")
    message = str(caught.value)
    assert "nope.ckpt" in message and "\n" not in message


@pytest.mark.parametrize("name", ["junk.pt", "junk.ckpt", "junk.safetensors"])
def test_corrupt_file_is_invalid_input(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_bytes(os.urandom(256))
    with pytest.raises(InvalidInputError) as caught:
        load_state_dict(tmp_path / name)
    assert name in str(caught.value) and "\n" not in str(caught.value)


def test_unreachable_source_fails_fast_with_the_file_name() -> None:
    start = time.monotonic()
    with pytest.raises(ModelUnavailableError) as caught:
        cached_download([UNREACHABLE], "vqgan_test.ckpt", subdir="vqgan")
    assert time.monotonic() - start < 5
    message = str(caught.value)
    assert "vqgan_test.ckpt" in message and "127.0.0.1" in message and "\n" not in message


def test_offline_mode_skips_the_network(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("network used while offline")

    monkeypatch.setattr("urllib.request.urlopen", no_network)
    with pytest.raises(ModelUnavailableError, match="offline mode is set"):
        cached_download(["https://example.invalid/x.ckpt"], "x.ckpt", subdir="vqgan")


def test_cached_file_is_used_and_its_checksum_checked(isolated_cache: Path) -> None:
    cached = isolated_cache / "vqgan" / "m.ckpt"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"weights")
    good = hashlib.sha256(b"weights").hexdigest()
    assert cached_download([UNREACHABLE], "m.ckpt", sha256=good, subdir="vqgan") == cached
    with pytest.raises(ModelUnavailableError, match="sha256"):
        cached_download([UNREACHABLE], "m.ckpt", sha256="0" * 64, subdir="vqgan")
    assert not cached.exists()


@pytest.fixture()
def file_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local HTTP server over a temp folder: (base URL, folder)."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None  # type: ignore[method-assign]
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()


def test_download_skips_bad_mirrors_and_caches(file_server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    base, root = file_server
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    (root / "wrong.bin").write_bytes(b"tampered")
    (root / "page.html").write_text("<html>login</html>")
    (root / "good.bin").write_bytes(b"the real weights")
    sha = hashlib.sha256(b"the real weights").hexdigest()
    sources = [f"{base}/missing.bin", f"{base}/page.html", f"{base}/wrong.bin", f"{base}/good.bin"]
    path = cached_download(sources, "m.ckpt", sha256=sha, subdir="vqgan")
    assert path.read_bytes() == b"the real weights"
    assert [p.name for p in path.parent.iterdir()] == ["m.ckpt"]
    assert cached_download([UNREACHABLE], "m.ckpt", sha256=sha, subdir="vqgan") == path


def test_hub_source_goes_through_hf_hub_download(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("guidance.checkpoints.host_reachable", lambda url: True)  # the hub is faked below
    calls = []

    def fake_hf_hub_download(repo_id: str, filename: str, *, local_dir: Path) -> str:
        calls.append((repo_id, filename))
        target = Path(local_dir) / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"hub weights")
        return str(target)

    monkeypatch.setattr("huggingface_hub.hf_hub_download", fake_hf_hub_download)
    path = cached_download([UNREACHABLE, "hf://owner/repo/ckpts/last.ckpt"], "last.ckpt", subdir="vqgan/hub")
    assert calls == [("owner/repo", "ckpts/last.ckpt")]
    assert path.read_bytes() == b"hub weights"
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]
