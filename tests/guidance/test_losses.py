"""Embedding distances and image regularisers against independent float64 numpy computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from guidance import cosine_dist_loss, directional_loss, range_loss, spherical_dist_loss, tv_loss


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def _spherical_np(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x, y = np.broadcast_arrays(_unit(x), _unit(y))
    return 2 * np.arcsin(np.linalg.norm(x - y, axis=-1) / 2) ** 2


def _cosine_np(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x, y = np.broadcast_arrays(x, y)
    return 1 - (x * y).sum(-1) / (np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1))


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a.astype(np.float32))


def test_spherical_distance_matches_numpy_on_random_unnormalised_vectors(rng):
    x = rng.normal(size=(7, 16)) * rng.uniform(0.1, 10, size=(7, 1))
    y = rng.normal(size=(7, 16)) * rng.uniform(0.1, 10, size=(7, 1))
    got = spherical_dist_loss(_t(x), _t(y)).numpy()
    assert got.shape == (7,)
    np.testing.assert_allclose(got, _spherical_np(x, y), rtol=1e-5, atol=1e-6)


def test_spherical_distance_ignores_vector_lengths(rng):
    x, y = _t(rng.normal(size=(5, 8))), _t(rng.normal(size=(5, 8)))
    torch.testing.assert_close(spherical_dist_loss(3.5 * x, 0.01 * y), spherical_dist_loss(x, y), rtol=1e-5, atol=1e-6)


def test_spherical_distance_of_identical_vectors_is_zero(rng):
    x = _t(rng.normal(size=(4, 32)))
    np.testing.assert_allclose(spherical_dist_loss(x, x).numpy(), 0.0, atol=1e-6)
    np.testing.assert_allclose(spherical_dist_loss(x, 2 * x).numpy(), 0.0, atol=1e-6)


def test_spherical_distance_of_opposite_vectors_is_pi_squared_over_two(rng):
    x = rng.normal(size=(4, 32))
    double = torch.from_numpy(x)
    np.testing.assert_allclose(spherical_dist_loss(double, -double).numpy(), math.pi ** 2 / 2, rtol=1e-6)
    # float32 arcsin near 1 loses digits (|x_n - y_n| / 2 rounds to 1 - 6e-8), hence the looser tolerance
    np.testing.assert_allclose(spherical_dist_loss(_t(x), -_t(x)).numpy(), math.pi ** 2 / 2, rtol=1e-3)


def test_spherical_distance_broadcasts_embeddings_against_prompts(rng):
    x = rng.normal(size=(6, 1, 12))  # N embeddings
    y = rng.normal(size=(3, 12))  # P prompts
    got = spherical_dist_loss(_t(x), _t(y)).numpy()
    assert got.shape == (6, 3)
    np.testing.assert_allclose(got, _spherical_np(x, y), rtol=1e-5, atol=1e-6)


def test_cosine_distance_matches_numpy_and_broadcasts(rng):
    x = rng.normal(size=(6, 1, 12)) * 4
    y = rng.normal(size=(3, 12))
    got = cosine_dist_loss(_t(x), _t(y)).numpy()
    assert got.shape == (6, 3)
    np.testing.assert_allclose(got, _cosine_np(x, y), rtol=1e-5, atol=1e-6)


def test_cosine_distance_of_identical_and_opposite_vectors(rng):
    x = _t(rng.normal(size=(3, 10)))
    np.testing.assert_allclose(cosine_dist_loss(x, 5 * x).numpy(), 0.0, atol=1e-6)
    np.testing.assert_allclose(cosine_dist_loss(x, -x).numpy(), 2.0, atol=1e-6)


def test_directional_loss_matches_numpy_per_row(rng):
    src_img, gen_img, src_txt, tgt_txt = (rng.normal(size=(5, 16)) for _ in range(4))
    got = directional_loss(_t(src_img), _t(gen_img), _t(src_txt), _t(tgt_txt)).numpy()
    assert got.shape == (5,)
    np.testing.assert_allclose(got, _cosine_np(gen_img - src_img, tgt_txt - src_txt), rtol=1e-5, atol=1e-6)


def test_directional_loss_is_zero_along_the_text_direction_and_two_against_it(rng):
    src_img, src_txt, tgt_txt = (_t(rng.normal(size=(2, 16))) for _ in range(3))
    direction = tgt_txt - src_txt
    np.testing.assert_allclose(directional_loss(src_img, src_img + 0.3 * direction, src_txt, tgt_txt).numpy(), 0, atol=1e-5)
    np.testing.assert_allclose(directional_loss(src_img, src_img - 0.3 * direction, src_txt, tgt_txt).numpy(), 2, atol=1e-5)


def test_tv_loss_matches_numpy_sum_of_squared_neighbour_differences_per_pixel(rng):
    images = rng.uniform(size=(3, 3, 9, 13))
    dx = np.diff(images, axis=3) ** 2
    dy = np.diff(images, axis=2) ** 2
    expected = (dx.sum(axis=(1, 2, 3)) + dy.sum(axis=(1, 2, 3))) / images[0].size
    got = tv_loss(_t(images)).numpy()
    assert got.shape == (3,)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_tv_loss_is_zero_for_constant_images():
    assert torch.count_nonzero(tv_loss(torch.full((2, 3, 8, 8), 0.7))) == 0


def test_range_loss_matches_numpy_mean_squared_overshoot(rng):
    images = rng.normal(0.5, 1.0, size=(4, 3, 6, 7))
    for low, high in ((0.0, 1.0), (-0.5, 0.25)):
        overshoot = images - np.clip(images, low, high)
        expected = (overshoot ** 2).mean(axis=(1, 2, 3))
        np.testing.assert_allclose(range_loss(_t(images), low, high).numpy(), expected, rtol=1e-5, atol=1e-7)


def test_range_loss_is_zero_inside_the_range(rng):
    assert torch.count_nonzero(range_loss(_t(rng.uniform(size=(2, 3, 5, 5))))) == 0


@pytest.mark.parametrize("loss", [tv_loss, range_loss])
def test_regularisers_are_differentiable(loss, rng):
    images = _t(rng.normal(0.5, 1.0, size=(2, 3, 8, 8))).requires_grad_()
    loss(images).sum().backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
