"""An edit's best-of-N start: its region (inside a mask, or the whole image of a directional edit) as it is,
recoloured round the hue wheel, with its lightness flipped and tinted, then (for the latent loops) random latents;
the diffusion sampler noises or inverts the best of the region and its recolourings."""

from __future__ import annotations

import colorsys
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pipelines.clip_guided_diffusion as clip_guided_diffusion
import pipelines.latent_optimization as latent_optimization
from guidance.errors import InvalidInputError
from pipelines.clip_guided_diffusion import CLIPGuidedDiffusionPipeline
from pipelines.parsers import HUE_TURNS, RECOLOURINGS, REGION_CANDIDATES, TINTS
from pipelines.starts import (CANDIDATE_CHUNK, TINT_SATURATION, lightness_flipped, recoloured, region_recolourings,
                              tinted)
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


def test_lightness_flipped_turns_dark_light_and_keeps_hue_and_mid_grey():
    pixels = torch.tensor([[0.9, 0.1, 0.1], [0.0, 0.0, 0.0], [0.5, 0.5, 0.5], [1.0, 1.0, 1.0]]).T.reshape(1, 3, 1, 4)
    mask = torch.tensor([1.0, 1.0, 1.0, 0.0]).view(1, 1, 1, 4)
    flipped = lightness_flipped(pixels, mask).reshape(3, 4).T
    assert torch.allclose(flipped[0], torch.tensor([0.1, 0.1 / 9, 0.1 / 9]), atol=1e-5)  # red -> nearly black red
    assert torch.allclose(flipped[1], torch.ones(3)) and torch.allclose(flipped[2], torch.full((3,), 0.5))
    assert torch.equal(flipped[3], torch.ones(3))  # outside the mask: untouched


def test_region_recolourings_turn_the_hue_then_flip_the_lightness():
    images = torch.rand(2, 3, 8, 8)
    mask = torch.ones(1, 1, 8, 8)
    pool = region_recolourings(images, mask, HUE_TURNS + 1)
    assert pool.shape == (2 * (HUE_TURNS + 1), 3, 8, 8)
    assert torch.allclose(pool[:2 * HUE_TURNS], recoloured(images, mask, HUE_TURNS))
    assert torch.allclose(pool[2 * HUE_TURNS:], lightness_flipped(images, mask))
    assert region_recolourings(images, mask, 3).shape[0] == 6  # fewer: the first hue turns


def test_region_recolourings_end_with_the_tinted_hues():
    images = torch.rand(2, 3, 8, 8)
    mask = torch.ones(1, 1, 8, 8)
    pool = region_recolourings(images, mask, RECOLOURINGS)
    assert RECOLOURINGS == HUE_TURNS + 1 + TINTS and REGION_CANDIDATES == 1 + RECOLOURINGS
    assert pool.shape == (2 * RECOLOURINGS, 3, 8, 8)
    untinted = 2 * (HUE_TURNS + 1)
    assert torch.allclose(pool[:untinted], region_recolourings(images, mask, HUE_TURNS + 1))
    assert torch.allclose(pool[untinted:], tinted(images, mask, TINTS))
    assert torch.allclose(region_recolourings(images, mask, HUE_TURNS + 3)[untinted:],
                          tinted(images, mask, 2))  # fewer: the first tints


def test_tinted_gives_a_white_region_each_hue_and_a_coloured_one_the_hues_between_its_turns():
    orange = [250 / 255, 140 / 255, 20 / 255]
    pixels = torch.tensor([[1.0, 1.0, 1.0], orange, [0.5, 0.5, 0.5]]).T.reshape(1, 3, 1, 3)
    mask = torch.tensor([1.0, 1.0, 0.0]).view(1, 1, 1, 3)
    tints = tinted(pixels, mask, TINTS)
    assert tints.shape == (TINTS, 3, 1, 3)
    step = 360 / TINTS
    white = [colorsys.rgb_to_hsv(*tints[k, :, 0, 0].tolist()) for k in range(TINTS)]
    assert [hue * 360 for hue, _, _ in white] == pytest.approx([(k + 0.5) * step for k in range(TINTS)],
                                                               abs=1)  # pink (hue 0), turned halfway and on
    assert all(saturation == pytest.approx(TINT_SATURATION, abs=1e-3) and value == pytest.approx(1) for
               _, saturation, value in white)
    assert hue_degrees(tints[0, :, 0, 1]) == pytest.approx(hue_degrees(pixels[0, :, 0, 1]) + step / 2, abs=1)
    assert 50 < hue_degrees(tints[0, :, 0, 1]) < 60  # orange tinted to yellow, which no whole turn reaches
    assert torch.equal(tints[..., 2], pixels[..., 2].expand(TINTS, -1, -1))  # outside: untouched grey


def test_recoloured_lays_out_a_batch_turn_by_turn():
    images = torch.rand(2, 3, 8, 8)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1
    turned = recoloured(images, mask, 3)
    assert turned.shape == (6, 3, 8, 8)  # turn k of image i at row (k - 1) * 2 + i
    for i in range(2):
        alone = recoloured(images[i:i + 1], mask, 3)
        assert torch.allclose(turned[i::2], alone, atol=1e-6)


@pytest.fixture(scope="module")
def shapes_vqgan() -> VQGANCLIPPipeline:
    """VQGAN-CLIP on the shipped shapes models."""
    return VQGANCLIPPipeline.from_pretrained("shapes-tiny", ["shapes-tiny"], device="cpu")


def circle_in_a_square(colour: str, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A rendered large circle of `colour` (grey background) at `size` px, and the mask of its centre square."""
    image = torch.from_numpy(render_shape_image(colour, "circle", image_size=size)).permute(2, 0, 1)
    mask = torch.zeros(size, size)
    low, high = round(0.2 * size), round(0.8 * size)
    mask[low:high, low:high] = 1
    return image.float().div(255).unsqueeze(0), mask


@pytest.fixture()
def yellow_circle() -> tuple[torch.Tensor, torch.Tensor]:
    """A yellow circle at VQGAN-CLIP's 64 px, and the mask of its centre square."""
    return circle_in_a_square("yellow", 64)


@pytest.mark.parametrize("seed", [0, 1])
def test_a_recoloured_start_lets_a_short_masked_edit_reach_the_far_side_of_the_hue_wheel(shapes_vqgan, yellow_circle,
                                                                                        seed):
    init, mask = yellow_circle
    run = dict(init_image=init, mask=mask, size=64, steps=20, cutn=8, seed=seed, progress=False, save_every=0)
    from_the_source = shapes_vqgan("a blue circle", candidates=1, **run)
    # the hue turns alone: in a run this short the flipped (nearly black) start, which this CLIP ranks first for
    # "a blue circle", ends dark; at the default 300 steps, and the benchmark's 100, it turns blue
    best_start = shapes_vqgan("a blue circle", candidates=1 + HUE_TURNS, **run)
    assert judge(from_the_source.images[0], "blue", "circle").colour in ("yellow", "orange")  # stuck near yellow
    assert judge(best_start.images[0], "blue", "circle").colour_hit
    source = np.asarray(Image.fromarray(render_shape_image("yellow", "circle", image_size=64))).astype(int)
    edited = np.asarray(best_start.images[0]).astype(int)
    outside = mask.numpy() == 0
    assert np.abs(edited[outside] - source[outside]).max() <= 1
    assert best_start.recipe["candidates"] == 1 + HUE_TURNS and "candidates" not in from_the_source.recipe


def test_the_default_pool_turns_the_yellow_circle_blue_in_a_full_length_edit(shapes_vqgan, yellow_circle):
    init, mask = yellow_circle
    edit = shapes_vqgan("a blue circle", init_image=init, mask=mask, size=64, steps=100, cutn=8, seed=0,
                        progress=False, save_every=0)
    assert edit.recipe["candidates"] == REGION_CANDIDATES
    assert judge(edit.images[0], "blue", "circle").colour_hit  # from the flipped start, which CLIP ranks first


def test_region_starts_hold_the_source_then_the_recolourings_then_random_latents(shapes_vqgan, yellow_circle,
                                                                                 monkeypatch):
    init, mask = yellow_circle
    pools = []

    def keep_pool(latents, count, losses, **kwargs):
        pools.append(latents.clone())
        return latents[:count]

    monkeypatch.setattr(latent_optimization, "best_candidates", keep_pool)
    shapes_vqgan("a blue circle", init_image=init, mask=mask, candidates=RECOLOURINGS + 3, num_images=2, size=64,
                 steps=1, cutn=2, seed=0, progress=False, save_every=0)
    pool = pools[0]
    generator = shapes_vqgan.generator
    with torch.no_grad():
        source = generator.encode(init)
        turned = generator.encode(region_recolourings(init, mask.view(1, 1, 64, 64), RECOLOURINGS))
    assert pool.shape[0] == 2 * (RECOLOURINGS + 3)  # image k's candidates at rows k, k + 2, ...
    assert torch.allclose(pool[0], source[0]) and torch.allclose(pool[1], source[0])
    for k in range(RECOLOURINGS):
        assert torch.allclose(pool[2 + 2 * k], turned[k], atol=1e-5)
        assert torch.allclose(pool[3 + 2 * k], turned[k], atol=1e-5)
    fresh = pool[2 + 2 * RECOLOURINGS:]
    assert fresh.shape[0] == 4 and not torch.allclose(fresh[0], fresh[1])


def test_the_recoloured_starts_are_encoded_a_chunk_at_a_time(shapes_vqgan, yellow_circle, monkeypatch):
    init, mask = yellow_circle
    generator, batches = shapes_vqgan.generator, []
    encode = generator.encode

    def counted(images):
        batches.append(images.shape[0])
        return encode(images)

    monkeypatch.setattr(generator, "encode", counted)
    shapes_vqgan("a blue circle", init_image=init, mask=mask, size=64, steps=1, cutn=2, seed=0, progress=False,
                 save_every=0)
    assert sorted(batches)[-2:] == [CANDIDATE_CHUNK, CANDIDATE_CHUNK]  # the 16 recolourings, not one batch of 16
    assert max(batches) == CANDIDATE_CHUNK < RECOLOURINGS


def test_an_unmasked_directional_edit_recolours_the_whole_image_and_a_plain_init_edit_draws_no_pool(
        shapes_vqgan, yellow_circle, monkeypatch):
    init, _ = yellow_circle
    regions = []

    def recolourings(images, mask, count):
        regions.append(mask)
        return region_recolourings(images, mask, count)

    monkeypatch.setattr(latent_optimization, "region_recolourings", recolourings)
    quick = dict(init_image=init, size=64, steps=1, cutn=2, seed=0, progress=False, save_every=0)
    directional = shapes_vqgan("a blue circle", source_text="a yellow circle", candidates=8, **quick)
    assert directional.recipe["candidates"] == 8
    assert len(regions) == 1 and torch.equal(regions[0], torch.ones(1, 1, 64, 64))  # the whole image is the region
    assert shapes_vqgan("a blue circle", source_text="a yellow circle", **quick).recipe["candidates"] == \
        REGION_CANDIDATES  # by default
    monkeypatch.setattr(latent_optimization, "best_candidates", lambda *a, **k: pytest.fail("no pool expected"))
    plain = shapes_vqgan("a blue circle", candidates=8, **quick)
    assert "candidates" not in plain.recipe  # an init image without a target starts from the source


def test_a_masked_edit_draws_region_candidates_by_default_and_text_to_image_one_start(shapes_vqgan, yellow_circle):
    init, mask = yellow_circle
    quick = dict(size=64, steps=1, cutn=2, seed=0, progress=False, save_every=0)
    masked = shapes_vqgan("a blue circle", init_image=init, mask=mask, **quick)
    from_noise = shapes_vqgan("a blue circle", **quick)
    assert masked.recipe["candidates"] == REGION_CANDIDATES
    assert "candidates" not in from_noise.recipe  # one random start, as measured best for VQGAN-CLIP from noise


@pytest.fixture(scope="module")
def shapes_diffusion() -> CLIPGuidedDiffusionPipeline:
    """CLIP-guided diffusion on the shipped unconditional shapes DDPM."""
    return CLIPGuidedDiffusionPipeline.from_pretrained("shapes-tiny", ["shapes-tiny"], device="cpu")


@pytest.fixture()
def small_yellow_circle() -> tuple[torch.Tensor, torch.Tensor]:
    """A yellow circle at the DDPM's 32 px, and the mask of its centre square."""
    return circle_in_a_square("yellow", 32)


@pytest.mark.parametrize("seed", [0, 1])
def test_a_recoloured_start_lets_the_samplers_masked_edit_reach_the_far_side_of_the_hue_wheel(
        shapes_diffusion, small_yellow_circle, seed):
    init, mask = small_yellow_circle
    run = dict(init_image=init, mask=mask, steps=20, cutn=8, seed=seed, progress=False, save_every=0)
    from_the_source = shapes_diffusion("a blue circle", candidates=1, **run)
    best_start = shapes_diffusion("a blue circle", **run)
    if seed == 0:  # stuck near yellow; since backward guidance moved to a coarse grid, seed 1 reaches blue from it too
        assert judge(from_the_source.images[0], "blue", "circle").colour in ("yellow", "orange")
    assert judge(best_start.images[0], "blue", "circle").colour_hit
    source = render_shape_image("yellow", "circle", image_size=32).astype(int)
    edited = np.asarray(best_start.images[0]).astype(int)
    outside = mask.numpy() == 0
    assert np.abs(edited[outside] - source[outside]).max() <= 1
    assert best_start.recipe["candidates"] == REGION_CANDIDATES and from_the_source.recipe["candidates"] == 1


@pytest.mark.parametrize("source, target, seed", [("black", "white", 0), ("red", "black", 1)])
def test_a_lightness_flipped_start_lets_the_samplers_masked_edit_turn_dark_light_and_light_dark(
        shapes_diffusion, source, target, seed):
    init, mask = circle_in_a_square(source, 32)
    run = dict(init_image=init, mask=mask, steps=20, cutn=8, seed=seed, progress=False, save_every=0)
    hues_only = shapes_diffusion(f"a {target} circle", candidates=1 + HUE_TURNS, **run)
    every_recolouring = shapes_diffusion(f"a {target} circle", **run)
    assert not judge(hues_only.images[0], target, "circle").colour_hit  # a hue turn of black is black
    assert judge(every_recolouring.images[0], target, "circle").colour_hit


@pytest.mark.parametrize("seed", [0, 1])
def test_a_lightness_flipped_start_lets_the_unmasked_directional_edit_turn_black_white(shapes_diffusion, seed):
    init, _ = circle_in_a_square("black", 32)
    run = dict(init_image=init, source_text="a black circle", steps=20, cutn=8, seed=seed, progress=False,
               save_every=0)
    from_the_source = shapes_diffusion("a white circle", candidates=1, **run)
    every_recolouring = shapes_diffusion("a white circle", **run)
    assert not judge(from_the_source.images[0], "white", "circle").colour_hit  # the inverted path stays dark
    assert judge(every_recolouring.images[0], "white", "circle").colour_hit
    assert every_recolouring.recipe["candidates"] == REGION_CANDIDATES


@pytest.mark.parametrize("seed", [0, 1])
def test_a_tinted_start_lets_the_samplers_localised_edit_turn_white_purple(shapes_diffusion, seed):
    # 30 steps: there seeds 0-3 all turn purple with the 17 starts and none with 9 (at 20 steps 2 of 4 did, the
    # others blue, with backward guidance on its coarse grid)
    init, _ = circle_in_a_square("white", 32)
    run = dict(init_image=init, mask="auto", source_text="a white circle", steps=30, cutn=8, seed=seed,
               progress=False, save_every=0)
    untinted = shapes_diffusion("a purple circle", candidates=1 + HUE_TURNS + 1, **run)
    every_recolouring = shapes_diffusion("a purple circle", **run)
    assert not judge(untinted.images[0], "purple", "circle").colour_hit  # white has no hue to turn
    assert judge(every_recolouring.images[0], "purple", "circle").colour_hit


@pytest.mark.parametrize("extra", [{"mask": "masked"}, {"mask": "auto", "source_text": "a yellow circle"}])
def test_the_samplers_region_starts_hold_each_source_then_its_recolourings(shapes_diffusion, small_yellow_circle,
                                                                          monkeypatch, extra):
    init, mask = small_yellow_circle
    pools = []

    def keep_pool(images, count, losses, **kwargs):
        pools.append(images.clone())
        assert losses(images[:2]).shape == (2,)  # one CLIP loss per start
        return images[:count]

    monkeypatch.setattr(clip_guided_diffusion, "best_candidates", keep_pool)
    pair = torch.cat([init, init.flip(-1)])  # two init images edited together
    region = mask if extra["mask"] == "masked" else "auto"
    inputs = init if region == "auto" else pair  # --mask auto finds the region of one image
    out = shapes_diffusion("a blue circle", init_image=inputs, candidates=4, steps=2, cutn=2, seed=0, progress=False,
                           save_every=0, **{**extra, "mask": region})
    pool, count = pools[0], inputs.shape[0]
    assert pool.shape[0] == 4 * count  # image k's starts at rows k, k + count, ...
    assert torch.equal(pool[:count], inputs)
    assert not torch.equal(pool[count:2 * count], inputs)  # the region turned
    assert out.recipe["candidates"] == 4


def test_the_sampler_draws_no_pool_from_noise_and_recolours_the_whole_image_of_an_unmasked_directional_edit(
        shapes_diffusion, small_yellow_circle, monkeypatch):
    init, _ = small_yellow_circle
    common = dict(steps=2, cutn=2, seed=0, progress=False, save_every=0)
    pools = []

    def keep_pool(images, count, losses, **kwargs):
        pools.append(images.clone())
        return images[:count]

    monkeypatch.setattr(clip_guided_diffusion, "best_candidates", keep_pool)
    assert "candidates" not in shapes_diffusion("a blue circle", **common).recipe and not pools
    edit = shapes_diffusion("a blue circle", init_image=init, source_text="a yellow circle", **common)
    assert edit.recipe["candidates"] == REGION_CANDIDATES
    expected = torch.cat([init, region_recolourings(init, torch.ones(1, 1, 32, 32), RECOLOURINGS)])
    assert torch.equal(pools[0], expected)  # the source, then its whole image recoloured


@pytest.mark.parametrize("candidates, masked, message", [
    (2, False, "--candidates with --method sampler applies to edits inside a --mask or with --source-text"),
    (REGION_CANDIDATES + 1, True, "--candidates must be"),
    (0, True, "--candidates must be"),
])
def test_the_sampler_refuses_candidates_it_cannot_draw(shapes_diffusion, small_yellow_circle, candidates, masked,
                                                       message):
    init, mask = small_yellow_circle
    with pytest.raises(InvalidInputError, match=message):
        shapes_diffusion("a blue circle", init_image=init, candidates=candidates, steps=2, cutn=2,
                         **({"mask": mask} if masked else {}))
