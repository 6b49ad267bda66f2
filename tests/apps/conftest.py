"""Fixtures of the web app's tests."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Callable

import pytest


@pytest.fixture
def png_bomb(tmp_path: Path) -> Callable[[str, int], Path]:
    """Makes a small PNG whose header declares side x side pixels (a decompression bomb's shape): bomb(name, side)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    def make(name: str, side: int) -> Path:
        header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
        path = tmp_path / name
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                         + chunk(b"IEND", b""))
        return path

    return make
