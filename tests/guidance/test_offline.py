"""load_clip without a network: missing weights fail fast in one line; bad names and tags get suggestions."""

from __future__ import annotations

import time

import pytest

from guidance import InvalidInputError, ModelUnavailableError, load_clip
from guidance.network import HUB_HOST, host_reachable


def assert_unavailable_quickly(cache_dir) -> str:
    started = time.monotonic()
    with pytest.raises(ModelUnavailableError) as info:
        load_clip("ViT-B-32", "openai", cache_dir=str(cache_dir))
    assert time.monotonic() - started < 10, "an offline failure must be fast"
    message = str(info.value)
    assert "\n" not in message
    assert "ViT-B-32" in message and "openai" in message
    assert "pretrained=" in message and "local file" in message, "the message says how to pass a local file"
    return message


def test_missing_weights_with_hf_hub_offline_fail_fast_in_one_line(empty_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    message = assert_unavailable_quickly(empty_cache)
    assert "offline" in message


def test_missing_weights_without_network_fail_fast_in_one_line(empty_cache, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    if host_reachable(HUB_HOST):
        pytest.skip(f"{HUB_HOST} is reachable; this test checks the behaviour without a network")
    assert_unavailable_quickly(empty_cache)


def test_unknown_architecture_suggests_close_names():
    with pytest.raises(InvalidInputError, match="unknown CLIP architecture 'ViT-B-33'") as info:
        load_clip("ViT-B-33")
    assert "did you mean" in str(info.value) and "ViT-B-32" in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_architecture_in_the_wrong_case_suggests_the_right_one():
    with pytest.raises(InvalidInputError, match="ViT-B-32"):
        load_clip("vit-b-32")


def test_unknown_pretrained_tag_lists_the_known_tags():
    with pytest.raises(InvalidInputError, match="unknown pretrained tag 'opneai'") as info:
        load_clip("ViT-B-32", "opneai")
    assert "openai" in str(info.value).split("opneai", 1)[1], "the known tags are listed"
    assert "local weights file" in str(info.value) and "\n" not in str(info.value)
