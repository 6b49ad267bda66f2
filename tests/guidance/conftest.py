"""Fixtures shared by the guidance tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face / toolkit cache, so no weights can come from an earlier download."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("CLIP_GUIDANCE_CACHE", str(tmp_path / "toolkit"))
    monkeypatch.delenv("CLIP_GUIDANCE_OFFLINE", raising=False)
    return tmp_path / "cache"
