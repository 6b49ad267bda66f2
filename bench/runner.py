"""What the benchmark scripts share: one fresh process per setting, peak memory, the machine, the table and JSON."""

from __future__ import annotations

import json
import multiprocessing as mp
import platform
import resource
from pathlib import Path
from typing import Callable, Sequence

import torch


def reset_peak_memory(device: torch.device) -> None:
    """Start counting peak memory now (CUDA only; a CPU process's peak RSS is its own from the start)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_memory(device: torch.device) -> dict:
    """Peak memory of this process in MiB and what was measured: CUDA allocations or the process RSS."""
    if device.type == "cuda":
        return {"peak_memory_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1), "memory_kind": "cuda allocated"}
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"peak_memory_mib": round(rss_kib / 1024, 1), "memory_kind": "process RSS"}


def timing(seconds_per_step: float) -> dict:
    """Seconds per step and steps per second, rounded for the table."""
    return {"seconds_per_step": round(seconds_per_step, 4), "steps_per_second": round(1 / seconds_per_step, 3)}


def cpu_name() -> str:
    """The CPU's model name ('AMD EPYC', 'Intel(R) Xeon(R) ...'; float results differ between them), else its
    architecture."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def machine() -> dict:
    """What ran the benchmark."""
    info = {"python": platform.python_version(), "torch": torch.__version__, "cpu": cpu_name(),
            "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def run_settings(measure: Callable[[dict], dict], settings: Sequence[dict], columns: Sequence[tuple[str, str, int]],
                 json_path: str | None = None) -> list[dict]:
    """Measure each setting in a fresh process (so its peak memory is its own), print a table row as each ends,
    and write {machine, results} as JSON if asked. `columns` are (header, result key, width)."""
    columns = [*columns, ("s/step", "seconds_per_step", 8), ("steps/s", "steps_per_second", 8),
               ("peak MiB", "peak_memory_mib", 9)]
    print(" ".join(f"{header:>{width}}" for header, _, width in columns))
    context = mp.get_context("spawn")
    results = []
    for setting in settings:
        with context.Pool(1) as pool:
            row = pool.apply(measure, (setting,))
        results.append(row)
        print(" ".join(f"{_cell(row[key]):>{width}}" for _, key, width in columns), flush=True)
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps({"machine": machine(), "results": results}, indent=2))
    return results


def _cell(value: object) -> str:
    """A table cell: floats with three decimals, the rest as text."""
    return f"{value:.3f}" if isinstance(value, float) else str(value)
