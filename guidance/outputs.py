"""Output files, checked before a run and written atomically, so a bad path or a crash never costs a result."""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

from .errors import InvalidInputError


def check_output(path: str | Path, suffixes: Sequence[str], what: str = "output", overwrite: bool = True) -> Path:
    """A file a run will write at its end, checked now: its suffix, not a directory, not an existing file unless
    `overwrite`, and a folder that exists (or can be made) and can be written. Returns it as a Path."""
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise InvalidInputError(f"{what} {path} must end in {' or '.join(suffixes)}")
    if path.is_dir():
        raise InvalidInputError(f"{what} {path} is an existing directory; give a file name such as {path / ('output' + suffixes[0])}")
    if path.exists() and not overwrite:
        raise InvalidInputError(f"{what} {path} already exists; choose another name or add --overwrite to replace it")
    check_folder(path.parent, f"the folder of {what} {path}")
    return path


def check_folder(folder: str | Path, what: str = "output folder") -> Path:
    """A folder that a run will write into: made now if missing, then proved writable with a probe file."""
    folder = Path(folder)
    existing = next((parent for parent in (folder, *folder.parents) if parent.exists()), Path("."))
    if not existing.is_dir():
        raise InvalidInputError(f"{what} cannot be made: {existing} is a file, not a folder; choose another path")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as error:
        raise InvalidInputError(f"{what} ({folder}) cannot be written ({error.strerror or type(error).__name__}); "
                                "choose a folder you can write to") from None
    return folder


def partial_path(path: str | Path) -> Path:
    """Where progress images of a run go while it runs: `NAME.partial.png` beside `NAME.png`."""
    path = Path(path)
    return path.with_name(f"{path.stem}.partial{path.suffix}")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path in the same folder (same suffix) to write; renamed over `path` only if the block succeeds.

    The temporary file is created with the usual permissions (0666 less the umask), as a plain write would.
    """
    path = Path(path)
    temporary = path.with_name(f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}")
    os.close(os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
