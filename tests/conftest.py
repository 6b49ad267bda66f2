"""Shared test fixtures: tiny random-weight CLIP models built offline from a config, and seeded randomness."""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch

from guidance import load_clip

# A CLIP small enough to build in ~0.2 s on a CPU: 32 px images in 8 px patches, 16-token texts.
TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2},
}


# Tiny models gain nothing from more threads, and on a busy 2-core machine the thread pool's spin-waits make
# each tiny forward pass hundreds of times slower; CLI subprocesses inherit the setting through the environment.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def tiny_clip_config() -> dict:
    """A fresh copy of the tiny open_clip config (tests may modify it)."""
    return copy.deepcopy(TINY_CLIP_CONFIG)


def _tiny_clip(name: str, seed: int):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return load_clip(name, architecture=copy.deepcopy(TINY_CLIP_CONFIG))


@pytest.fixture(scope="session")
def tiny_clip():
    """A frozen tiny CLIP with random (seeded) weights, named 'tiny'. Shared: do not modify it."""
    return _tiny_clip("tiny", 0)


@pytest.fixture(scope="session")
def tiny_clip_b():
    """A second tiny CLIP with other random weights, named 'tiny-b', for ensembles."""
    return _tiny_clip("tiny-b", 1)


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded numpy generator for random test inputs."""
    return np.random.default_rng(1234)
