"""Safe checkpoint I/O: read safetensors and torch files without running pickled code, write safetensors,
and download weights into a local cache from several mirrors."""

from __future__ import annotations

import codecs
import hashlib
import os
import pickle
import shutil
import urllib.request
import zipfile
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from guidance.errors import InvalidInputError, ModelUnavailableError, first_line
from guidance.network import HUB_HOST, host_reachable, offline_requested

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
CONNECT_TIMEOUT_S = 10.0
_CHUNK = 1 << 20
_CONTAINER_KEYS = ("state_dict", "model")


def cache_dir() -> Path:
    """Where downloaded weights live: `$CLIP_GUIDANCE_CACHE`, else `~/.cache/clip-guidance`."""
    configured = os.environ.get("CLIP_GUIDANCE_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "clip-guidance"


# --- reading ----------------------------------------------------------------------------------------


class InertObject:
    """Stands in for any pickled object whose class is not a tensor or a plain container.

    Its constructor and `__setstate__` only record their arguments, so loading it runs no foreign code
    (`__new__` does the recording, because pickle may build instances without calling `__init__`)."""

    def __new__(cls, *args: Any, **kwargs: Any) -> InertObject:
        self = super().__new__(cls)
        self.args, self.kwargs, self.state, self.items = args, kwargs, None, {}
        return self

    def __setstate__(self, state: Any) -> None:
        """Record the pickled state instead of applying it."""
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        """Record dict-style items pickled for mapping subclasses."""
        self.items[key] = value

    def append(self, value: Any) -> None:
        """Record list-style items pickled for sequence subclasses."""
        self.items[len(self.items)] = value

    def extend(self, values: Any) -> None:
        """Record list-style items pickled for sequence subclasses."""
        for value in values:
            self.append(value)

    def __repr__(self) -> str:
        return f"<inert {type(self).__module__}.{type(self).__qualname__}>"


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The only globals a restricted load resolves: tensor rebuild functions and plain containers."""
    rebuilders = ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
                  "_rebuild_parameter_with_state")
    allowed: dict[tuple[str, str], Any] = {("torch._utils", name): getattr(torch._utils, name) for name in rebuilders}
    allowed.update({
        ("collections", "OrderedDict"): OrderedDict,
        ("torch", "Size"): torch.Size,
        ("torch", "device"): torch.device,
        ("_codecs", "encode"): codecs.encode,
    })
    allowed.update({("builtins", kind.__name__): kind for kind in (set, frozenset, bytearray, complex, slice)})
    return allowed


_ALLOWED_GLOBALS = _allowed_globals()


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only allow-listed globals; every other class or function becomes inert."""

    def find_class(self, module: str, name: str) -> Any:
        """Return the allowed global, a torch dtype, or an inert placeholder class named after the global."""
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[module, name]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        return type(name, (InertObject,), {"__module__": module, "__qualname__": name})


class RestrictedPickle:
    """A `pickle_module` for `torch.load` that never executes pickled code."""

    Unpickler = RestrictedUnpickler

    @staticmethod
    def load(file: Any, **kwargs: Any) -> Any:
        """Unpickle one object from `file` with the restricted unpickler."""
        return RestrictedUnpickler(file, **kwargs).load()


def _torch_load(path: Path, allow_pickle: bool) -> Any:
    """Load a torch file: weights-only first, then the restricted unpickler (or full pickle if allowed)."""
    mmap = zipfile.is_zipfile(path)
    if allow_pickle:
        return torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:
        return torch.load(path, map_location="cpu", weights_only=False, mmap=mmap, pickle_module=RestrictedPickle)


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """Dig the tensor mapping out of `{"state_dict": ...}` / `{"model": ...}` containers and `module.` prefixes."""
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    while isinstance(obj, Mapping):
        inner = next((obj[key] for key in _CONTAINER_KEYS if isinstance(obj.get(key), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise InvalidInputError(f"{path} holds no state dict (found {type(obj).__name__}); pass a weights file")
    bad = next((key for key, value in obj.items() if not isinstance(value, torch.Tensor)), None)
    if bad is not None:
        raise InvalidInputError(f"{path} is not a state dict: entry {bad!r} is {type(obj[bad]).__name__}, not a tensor")
    state = {str(key): value for key, value in obj.items()}
    if all(key.startswith("module.") for key in state):
        state = {key.removeprefix("module."): value for key, value in state.items()}
    return state


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header metadata of a safetensors file."""
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}, dict(handle.metadata() or {})


def load_state_dict(path: str | Path, *, allow_pickle: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a `.safetensors` or torch (`.pt/.pth/.bin/.ckpt`) file, read without running pickles."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelUnavailableError(
            f"checkpoint not found: {path}; pass the path of an existing .safetensors or .ckpt/.pt/.pth/.bin file")
    try:
        if path.suffix == ".safetensors":
            return _read_safetensors(path)
        return _unwrap(_torch_load(path, allow_pickle), path), {}
    except InvalidInputError:
        raise
    except Exception as error:  # any failure to parse a foreign file is the user's corrupt input
        raise InvalidInputError(f"cannot read checkpoint {path}: {first_line(error)}") from error


# --- writing ----------------------------------------------------------------------------------------


def _storage_key(tensor: torch.Tensor) -> tuple[str, int]:
    """Identify the memory a tensor lives in, to find tensors that share it."""
    return str(tensor.device), tensor.untyped_storage().data_ptr()


def save_state_dict(state_dict: Mapping[str, torch.Tensor], path: str | Path, metadata: Mapping[str, str]) -> None:
    """Write tensors and string metadata to safetensors (shared/strided tensors copied, file replaced atomically)."""
    path = Path(path).expanduser()
    seen: set[tuple[str, int]] = set()
    tensors: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        tensor = tensor.detach().cpu()
        storage = _storage_key(tensor)
        tensors[key] = tensor.clone() if storage in seen else tensor.contiguous()
        seen.add(storage)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    save_file(tensors, str(partial), metadata={str(k): str(v) for k, v in metadata.items()})
    os.replace(partial, path)


# --- downloading ------------------------------------------------------------------------------------


class _FetchError(Exception):
    """One source could not deliver the file; the message says why in a few words."""


def _sha256(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch_url(url: str, destination: Path) -> None:
    """Stream an http(s) URL to `destination`, refusing HTML pages served in place of the file."""
    request = urllib.request.Request(url, headers={"User-Agent": "clip-guidance-toolkit"})
    try:
        with urllib.request.urlopen(request, timeout=CONNECT_TIMEOUT_S) as response:
            if response.headers.get_content_type() == "text/html":
                raise _FetchError("served a web page, not the file")
            total = int(response.headers.get("Content-Length") or 0) or None
            with destination.open("wb") as out, tqdm(total=total, unit="B", unit_scale=True, leave=False,
                                                     desc=destination.name, disable=None) as bar:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
    except OSError as error:
        raise _FetchError(first_line(error, 80)) from error


def _fetch_hub(source: str, destination: Path) -> None:
    """Download `hf://owner/repo/path/in/repo` with huggingface_hub, then move it to `destination`."""
    from huggingface_hub import hf_hub_download

    owner, repo, *inner = source.removeprefix("hf://").split("/")
    if not inner:
        raise _FetchError("expected hf://owner/repo/path/in/repo")
    staging = destination.with_name(destination.name + ".hub")
    try:
        fetched = hf_hub_download(f"{owner}/{repo}", "/".join(inner), local_dir=staging)
        os.replace(fetched, destination)
    except Exception as error:  # the hub client raises many unrelated types; any of them means "next source"
        raise _FetchError(first_line(error, 80)) from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _fetch(source: str, target: Path, sha256: str | None) -> None:
    """Fetch one source into `target` via a `.part` file, checking the sha256 when it is known."""
    partial = target.with_name(target.name + ".part")
    if not host_reachable(HUB_HOST if source.startswith("hf://") else source):
        raise _FetchError("unreachable (offline?)")
    try:
        if source.startswith("hf://"):
            _fetch_hub(source, partial)
        elif source.startswith(("https://", "http://")):
            _fetch_url(source, partial)
        else:
            raise _FetchError("unsupported source (use https://... or hf://owner/repo/path)")
        if sha256 is not None and _sha256(partial) != sha256.lower():
            raise _FetchError("sha256 mismatch")
    except _FetchError:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, target)


def _source_label(source: str) -> str:
    """A short name for a source in error messages: the host, or the hub repo."""
    if source.startswith("hf://"):
        return "hf://" + "/".join(source.removeprefix("hf://").split("/")[:2])
    return source.split("://", 1)[-1].split("/", 1)[0]


def cached_download(sources: Sequence[str], filename: str, *, sha256: str | None = None, subdir: str,
                    hint: str | None = None) -> Path:
    """Return `cache_dir()/subdir/filename`, downloading it from the first source that delivers a valid copy."""
    target = cache_dir() / subdir / filename
    problems: list[str] = []
    if target.is_file():
        if sha256 is None or _sha256(target) == sha256.lower():
            return target
        target.unlink()
        problems.append("the cached copy failed its sha256 check")
    if offline_requested():
        problems.append("offline mode is set, so no download was tried")
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        for source in sources:
            try:
                _fetch(source, target, sha256)
                return target
            except _FetchError as error:
                problems.append(f"{_source_label(source)}: {error}")
    advice = hint or "download it yourself and pass its local path instead"
    raise ModelUnavailableError(f"cannot get {filename} ({'; '.join(problems) or 'no sources'}); {advice}")
