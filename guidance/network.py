"""Fast checks for whether a download can work, so offline runs fail in seconds, not minutes."""

from __future__ import annotations

import contextlib
import functools
import os
import socket
from typing import Iterator
from urllib.parse import urlparse

import huggingface_hub.constants as hub_constants

HUB_HOST = "huggingface.co"


def offline_requested() -> bool:
    """True when the user asked for no network (HF_HUB_OFFLINE=1 or CLIP_GUIDANCE_OFFLINE=1)."""
    return any(os.environ.get(var, "").lower() in ("1", "true", "yes", "on")
               for var in ("HF_HUB_OFFLINE", "CLIP_GUIDANCE_OFFLINE"))


@functools.lru_cache(maxsize=64)
def _connects(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def host_reachable(url_or_host: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the URL's host opens within `timeout` seconds (cached per process)."""
    if offline_requested():
        return False
    parsed = urlparse(url_or_host if "://" in url_or_host else f"https://{url_or_host}")
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    return bool(parsed.hostname) and _connects(parsed.hostname, port, timeout)


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """Make huggingface_hub serve files from its cache only, without network retries."""
    previous = hub_constants.HF_HUB_OFFLINE
    hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = previous
