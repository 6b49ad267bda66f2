"""Where and how a run executes: device choice, precision, seeds, and out-of-memory reports."""

from __future__ import annotations

import contextlib
import re
import secrets
from typing import Iterator

import torch

from .errors import InvalidInputError, ToolkitError
from .names import PRECISION_CHOICES, PRECISION_NAMES  # noqa: F401 (PRECISION_CHOICES: re-exported)
from .validation import check_seed

PRECISIONS = dict(zip(PRECISION_NAMES, (torch.float32, torch.bfloat16, torch.float16), strict=True))


def pick_device(name: str | None = None) -> torch.device:
    """The requested device, or the best available one: cuda, then mps, then cpu."""
    if name in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InvalidInputError(f"unknown device {name!r}; use cpu, cuda, cuda:1, mps or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(f"device {name} asked for, but no CUDA GPU is visible; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise InvalidInputError(f"device {name} does not exist; {torch.cuda.device_count()} CUDA GPU(s) visible")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise InvalidInputError("device mps asked for, but Apple MPS is not available; use --device cpu")
    return device


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision a name means on a device: 'auto' is bf16 on CUDA GPUs that support bf16, fp32 elsewhere (the
    CPU included); other names are themselves, checked as `check_precision` does."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    check_precision(precision, device)
    return precision


def check_precision(precision: str, device: torch.device) -> torch.dtype:
    """The autocast dtype for a precision name ('auto' resolved by `resolve_precision`), refusing fp16 where it does
    not run."""
    if precision == "auto":
        precision = resolve_precision(precision, device)
    if precision not in PRECISIONS:
        raise InvalidInputError(f"unknown precision {precision!r}; choose auto, fp32, bf16 or fp16")
    if precision == "fp16" and device.type == "cpu":
        raise InvalidInputError("fp16 needs a GPU; on CPU use --precision bf16 or fp32")
    return PRECISIONS[precision]


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """An autocast context for bf16/fp16, or a no-op for fp32."""
    dtype = check_precision(precision, device)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def resolve_seed(seed: int | None) -> int:
    """The given seed, or a fresh random one (recorded so the run can be repeated)."""
    if seed is None:
        return secrets.randbelow(2**31)
    return check_seed(seed)


_ALLOCATION = re.compile(r"Tried to allocate ([\d.]+ [KMGT]i?B)")


@contextlib.contextmanager
def explain_out_of_memory(what: str, suggestion: str) -> Iterator[None]:
    """Turn an out-of-memory error into a one-line ToolkitError with the size asked for and a suggestion."""
    try:
        yield
    except torch.OutOfMemoryError as error:
        asked = _ALLOCATION.search(str(error))
        amount = f" (tried to allocate {asked.group(1)})" if asked else ""
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise ToolkitError(f"out of memory during {what}{amount}; {suggestion}") from None


_COMPILE_WORKS: dict[str, str | None] = {}  # device type -> None if torch.compile works there, else why not


def check_compile(device: torch.device) -> None:
    """Refuse `--compile` in one line where torch.compile cannot run (no compiler toolchain, unsupported Python or
    backend): a tiny function is compiled and run once per process and device type."""
    if device.type not in _COMPILE_WORKS:
        try:
            torch.compile(lambda x: x * 2 + 1)(torch.ones(4, device=device))
            _COMPILE_WORKS[device.type] = None
        except Exception as error:  # the backend's failures have many types (compiler missing, unsupported, ...)
            _COMPILE_WORKS[device.type] = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:200]}"
    if _COMPILE_WORKS[device.type] is not None:
        raise InvalidInputError(f"--compile: torch.compile does not work on {device.type} here "
                                f"({_COMPILE_WORKS[device.type]}); run without --compile")


def prepare_device(device: torch.device) -> None:
    """Per-device speed settings: flush denormal floats on CPU (they slow convolutions down many times)."""
    if device.type == "cpu":
        torch.set_flush_denormal(True)
