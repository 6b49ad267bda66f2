"""A masked edit's best-of-N start: its region as it is, recoloured round the hue wheel, then random latents."""

from __future__ import annotations

import colorsys
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pipelines.latent_optimization as latent_optimization
from pipelines.latent_optimization import HUE_TURNS, REGION_CANDIDATES, recoloured
from pipelines.vqgan_clip import VQGANCLIPPipeline
from training.shapes_world import render_shape_image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))  # the benchmark's judge imports by file name

from judge import judge  # noqa: E402


def hue_degrees(rgb: torch.Tensor) -> float:
    """The hue of one RGB pixel in [0, 1], in degrees."""
    return colorsys.rgb_to_hsv(*rgb.tolist())[0] * 360


def test_recoloured_turns_only_the_region_evenly_round_the_hue_wheel():
    image = torch.zeros(1, 3, 8, 8)
    image[:, 0] = 0.9  # red, hue 0
    image[:, 1:] = 0.1
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :, :4] = 1
    turned = recoloured(image, mask, 3)
    assert turned.shape == (3, 3, 8, 8)
    assert torch.equal(turned[..., 4:], image[..., 4:].expand(3, -1, -1, -1))  # outside: untouched
    hues = [hue_degrees(turned[k, :, 0, 0]) for k in range(3)]
    assert hues == pytest.approx([90, 180, 270], abs=1)  # a quarter of the circle apart
    saturation = [colorsys.rgb_to_hsv(*turned[k, :, 0, 0].tolist())[1] for k in range(3)]
    assert saturation == pytest.approx([0.8 / 0.9] * 3, abs=1e-3)  # only the hue turns


@pytest.fixture(scope="module")
def shapes_vqgan() -> VQGANCLIPPipeline:
    """VQGAN-CLIP on the shipped shapes models."""
    return VQGANCLIPPipeline.from_pretrained("shapes-tiny", ["shapes-tiny"], device="cpu")


@pytest.fixture()
def yellow_circle() -> tuple[torch.Tensor, torch.Tensor]:
    """A rendered large yellow circle (64 px, grey background) and the mask of its centre square."""
    image = torch.from_numpy(render_shape_image("yellow", "circle", image_size=64)).permute(2, 0, 1)
    mask = torch.zeros(64, 64)
    mask[13:51, 13:51] = 1
    return image.float().div(255).unsqueeze(0), mask


@pytest.mark.parametrize("seed", [0, 1])
def test_a_recoloured_start_lets_a_short_masked_edit_reach_the_far_side_of_the_hue_wheel(shapes_vqgan, yellow_circle,
                                                                                        seed):
    init, mask = yellow_circle
    run = dict(init_image=init, mask=mask, size=64, steps=20, cutn=8, seed=seed, progress=False, save_every=0)
    from_the_source = shapes_vqgan("a blue circle", candidates=1, **run)
    best_start = shapes_vqgan("a blue circle", candidates=1 + HUE_TURNS, **run)
    assert judge(from_the_source.images[0], "blue", "circle").colour in ("yellow", "orange")  # stuck near yellow
    assert judge(best_start.images[0], "blue", "circle").colour_hit
    source = np.asarray(Image.fromarray(render_shape_image("yellow", "circle", image_size=64))).astype(int)
    edited = np.asarray(best_start.images[0]).astype(int)
    outside = mask.numpy() == 0
    assert np.abs(edited[outside] - source[outside]).max() <= 1
    assert best_start.recipe["candidates"] == 1 + HUE_TURNS and "candidates" not in from_the_source.recipe


def test_region_starts_hold_the_source_then_the_recolourings_then_random_latents(shapes_vqgan, yellow_circle,
                                                                                 monkeypatch):
    init, mask = yellow_circle
    pools = []

    def keep_pool(latents, count, losses, **kwargs):
        pools.append(latents.clone())
        return latents[:count]

    monkeypatch.setattr(latent_optimization, "best_candidates", keep_pool)
    shapes_vqgan("a blue circle", init_image=init, mask=mask, candidates=HUE_TURNS + 3, num_images=2, size=64,
                 steps=1, cutn=2, seed=0, progress=False, save_every=0)
    pool = pools[0]
    generator = shapes_vqgan.generator
    with torch.no_grad():
        source = generator.encode(init)
        turned = generator.encode(recoloured(init, mask.view(1, 1, 64, 64), HUE_TURNS))
    assert pool.shape[0] == 2 * (HUE_TURNS + 3)  # image k's candidates at rows k, k + 2, ...
    assert torch.allclose(pool[0], source[0]) and torch.allclose(pool[1], source[0])
    for k in range(HUE_TURNS):
        assert torch.allclose(pool[2 + 2 * k], turned[k], atol=1e-5)
        assert torch.allclose(pool[3 + 2 * k], turned[k], atol=1e-5)
    fresh = pool[2 + 2 * HUE_TURNS:]
    assert fresh.shape[0] == 4 and not torch.allclose(fresh[0], fresh[1])


def test_an_unmasked_edit_ignores_candidates(shapes_vqgan, yellow_circle, monkeypatch):
    init, _ = yellow_circle
    monkeypatch.setattr(latent_optimization, "best_candidates", lambda *a, **k: pytest.fail("no pool expected"))
    out = shapes_vqgan("a blue circle", init_image=init, source_text="a yellow circle", candidates=8, size=64,
                       steps=1, cutn=2, seed=0, progress=False, save_every=0)
    assert "candidates" not in out.recipe  # the whole image starts from the source


def test_a_masked_edit_draws_region_candidates_by_default_and_text_to_image_one_start(shapes_vqgan, yellow_circle):
    init, mask = yellow_circle
    quick = dict(size=64, steps=1, cutn=2, seed=0, progress=False, save_every=0)
    masked = shapes_vqgan("a blue circle", init_image=init, mask=mask, **quick)
    from_noise = shapes_vqgan("a blue circle", **quick)
    assert masked.recipe["candidates"] == REGION_CANDIDATES
    assert "candidates" not in from_noise.recipe  # one random start, as measured best for VQGAN-CLIP from noise
