"""The web app's results on disk: one folder per run, the oldest removed beyond the operator's limits."""

from __future__ import annotations

import re
import shutil
import time
import uuid
from pathlib import Path

RUN_FOLDER = re.compile(r"\d{8}-\d{6}-[0-9a-f]{6}")  # only folders the app made are ever removed


def new_run_folder(output_dir: Path) -> Path:
    """A fresh folder name for a run's files (created when the first file is saved)."""
    return output_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def folder_bytes(folder: Path) -> int:
    """The size of the files in a folder."""
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def prune_results(output_dir: Path, keep: int | None = None, keep_mb: float | None = None) -> list[Path]:
    """Remove the oldest run folders until at most `keep` remain and they hold at most `keep_mb` MB (the newest
    is always kept); the removed folders. Other files in `output_dir` are never touched."""
    if not output_dir.is_dir() or (keep is None and keep_mb is None):
        return []
    runs = sorted((path for path in output_dir.iterdir() if path.is_dir() and RUN_FOLDER.fullmatch(path.name)),
                  key=lambda path: (path.stat().st_mtime, path.name))
    sizes = {run: folder_bytes(run) for run in runs} if keep_mb is not None else {}
    removed = []
    while len(runs) > 1 and ((keep is not None and len(runs) > keep)
                             or (keep_mb is not None and sum(sizes[run] for run in runs) > keep_mb * 1e6)):
        oldest = runs.pop(0)
        shutil.rmtree(oldest, ignore_errors=True)
        removed.append(oldest)
    return removed
