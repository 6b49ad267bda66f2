"""Meaning, not just plumbing: the pipelines with the shipped shapes-tiny models, judged by pixel statistics
(hue shares of saturated pixels, pipelines.colour_stats), never by CLIP itself."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from pipelines.clip_guided_diffusion import CLIPGuidedDiffusionPipeline
from pipelines.noise_optimization import NoiseOptimizationPipeline
from pipelines.pixels_clip import PixelsCLIPPipeline
from training.colour_stats import colour_shares, dominant_colour
from training.shapes_world import render_canonical
from pipelines.vqgan_clip import VQGANCLIPPipeline

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))  # the benchmark's judge, by file name
from judge import judge  # noqa: E402

pytestmark = pytest.mark.slow

SEEDS = (0, 1, 2)
PROMPTS = [("a red circle", "red"), ("a blue square", "blue"), ("a green triangle", "green"),
           ("a yellow star", "yellow")]


@pytest.fixture(scope="module")
def diffusion() -> CLIPGuidedDiffusionPipeline:
    """CLIP-guided diffusion on the packaged shapes DDPM and CLIP."""
    return CLIPGuidedDiffusionPipeline.from_pretrained("shapes-tiny", ["shapes-tiny"], device="cpu")


@pytest.fixture(scope="module")
def red_circle(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, Path]:
    """A rendered 'a red circle' (large, centred, plain grey background): the array and a PNG of it."""
    array = render_canonical("a red circle")
    path = tmp_path_factory.mktemp("shapes") / "red-circle.png"
    Image.fromarray(array).save(path)
    return array, path


def at_size(source: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The source image resized (bicubic) to an output's (width, height)."""
    return np.asarray(Image.fromarray(source).resize(size, Image.BICUBIC))


def background_change(source: np.ndarray, edited: Image.Image) -> float:
    """Mean absolute change (0-255) of the edit over the source's background pixels (those equal to its corner)."""
    reference = at_size(source, edited.size).astype(float)
    background = np.all(np.abs(reference - source[0, 0]) < 4, axis=-1)
    return float(np.abs(np.asarray(edited, dtype=float) - reference)[background].mean())


# --- VQGAN-CLIP -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vqgan_clip() -> VQGANCLIPPipeline:
    """VQGAN-CLIP on the packaged shapes models (no download)."""
    return VQGANCLIPPipeline.from_pretrained("shapes-tiny", ["shapes-tiny"], device="cpu")


@pytest.fixture(scope="module")
def vqgan_image(vqgan_clip: VQGANCLIPPipeline) -> Callable[[str, int], Image.Image]:
    """A 64x64 image from (prompt, seed) as the README's offline demo makes it (default augmentations), made once
    per module for the tests that share it."""
    @functools.cache
    def make(prompt: str, seed: int) -> Image.Image:
        return vqgan_clip(prompt, size=64, steps=100, seed=seed, cutn=16, progress=False, save_every=0).images[0]
    return make


@pytest.mark.parametrize("prompt, colour", PROMPTS)
def test_vqgan_clip_colour_matches_the_prompt_for_most_seeds(vqgan_image, prompt, colour):
    found = [dominant_colour(vqgan_image(prompt, seed)) for seed in SEEDS]
    assert found.count(colour) >= 2, found


def test_vqgan_clip_negative_prompt_lowers_the_red_share(vqgan_image):
    plain = np.mean([colour_shares(vqgan_image("a red circle", seed))["red"] for seed in SEEDS])
    negative = np.mean([colour_shares(vqgan_image("a red circle | red:-1", seed))["red"] for seed in SEEDS])
    assert negative < plain * 0.8, (plain, negative)


def test_vqgan_clip_directional_edit_turns_a_red_circle_blue_and_keeps_the_background(vqgan_clip, red_circle):
    # The tiny VQGAN's directional edit is weak per seed (blue share 0.02-0.06 of the image after 80 steps, measured
    # with both augmentation sets), so the red must go on every seed and the blue come on at least 2 of 3.
    source, path = red_circle
    before, turned_blue = colour_shares(source), 0
    for seed in SEEDS:
        edited = vqgan_clip("a blue circle", size=64, steps=120, seed=seed, cutn=16, init_image=path,
                            source_text="a red circle", progress=False, save_every=0).images[0]
        after = colour_shares(edited)
        assert after["red"] < before["red"] * 0.5, (seed, before, after)
        assert background_change(source, edited) < 20
        turned_blue += after["blue"] > before["blue"] + 0.03
    assert turned_blue >= 2


def test_vqgan_clip_directional_edit_with_mask_auto_recolours_the_circle_and_nothing_else(vqgan_clip, red_circle):
    # Measured, seeds 0-2: the red is gone every time (the circle turns orange, blue or yellow: this tiny VQGAN's
    # colour edits are weak, see above), and the background does not change at all (0.0 levels), where the
    # unmasked directional edit changes it by about 13 levels (bench/meaning.py, docs/shapes_models.md).
    source, path = red_circle
    before = colour_shares(source)
    for seed in SEEDS:
        edited = vqgan_clip("a blue circle", size=64, steps=100, seed=seed, cutn=16, init_image=path,
                            source_text="a red circle", mask="auto", progress=False, save_every=0).images[0]
        assert colour_shares(edited)["red"] < before["red"] * 0.5, seed
        assert background_change(source, edited) < 0.5, seed


# --- Pixels-CLIP ----------------------------------------------------------------------------------------------


def test_pixels_clip_balanced_colour_axes_draw_the_colours_that_lucids_map_leaves_pale():
    # The meaning benchmark's judge and settings (64 px, 100 steps, the CLI's 32 cutouts), seed 0. Measured on the
    # AMD VM (docs/shapes_models.md): the balanced axes (fft) hit all three colours; Lucid's map (lucid) none, its
    # pale images' white blobs outnumbering the asked colour's pixels.
    prompts = [("green", "circle"), ("blue", "square"), ("yellow", "circle")]
    hits = {}
    for parameterization in ("fft", "lucid"):
        pipe = PixelsCLIPPipeline.from_pretrained(parameterization, ["shapes-tiny"], device="cpu")
        images = [pipe(f"a {colour} {shape}", size=64, steps=100, seed=0, progress=False, save_every=0).images[0]
                  for colour, shape in prompts]
        hits[parameterization] = sum(judge(image, colour, shape).colour_hit
                                     for image, (colour, shape) in zip(images, prompts))
    assert hits["fft"] >= 2 and hits["lucid"] <= 1, hits


# --- CLIP-guided diffusion ------------------------------------------------------------------------------------


def diffusion_image(pipe: CLIPGuidedDiffusionPipeline, prompt: str, seed: int, **options) -> Image.Image:
    """One 32x32 guided sample (or edit) from the prompt."""
    return pipe(prompt, steps=50, seed=seed, cutn=16, progress=False, save_every=0, **options).images[0]


def test_guided_diffusion_red_circle_is_red_for_most_seeds(diffusion):
    found = [dominant_colour(diffusion_image(diffusion, "a red circle", seed)) for seed in SEEDS]
    assert found.count("red") >= 2, found


def colour_purity(image: Image.Image, colour: str) -> float:
    """The share of an image's saturated pixels that have the named colour."""
    shares = colour_shares(image)
    return shares[colour] / max(sum(shares.values()), 1e-9)


@pytest.mark.parametrize("prompt, colour", PROMPTS[:2])
def test_guidance_makes_the_prompted_colour_purer_than_unguided_samples_from_the_same_seeds(diffusion, prompt,
                                                                                            colour):
    guided = np.mean([colour_purity(diffusion_image(diffusion, prompt, seed), colour) for seed in SEEDS])
    unguided = np.mean([colour_purity(diffusion_image(diffusion, prompt, seed, clip_scale=0.0), colour)
                        for seed in SEEDS])
    assert guided > unguided + 0.2, (guided, unguided)


def test_the_text_ddpm_alone_draws_the_asked_colour_where_the_unconditional_one_draws_any(diffusion):
    """shapes-tiny-text follows the prompt with no CLIP guidance at all (clip_scale 0, its folder's cfg_scale);
    the unconditional shapes-tiny, unguided from the same seeds, hits the asked colour only by chance."""
    text = CLIPGuidedDiffusionPipeline.from_pretrained("shapes-tiny-text", ["shapes-tiny"], device="cpu")
    asked = [(prompt, colour, seed) for prompt, colour in PROMPTS for seed in SEEDS]
    conditioned = [dominant_colour(diffusion_image(text, p, seed, clip_scale=0.0)) == c for p, c, seed in asked]
    unconditional = [dominant_colour(diffusion_image(diffusion, p, seed, clip_scale=0.0)) == c for p, c, seed in asked]
    assert sum(conditioned) >= 9 and sum(conditioned) >= sum(unconditional) + 5, (conditioned, unconditional)


def test_diffusionclip_finetuned_edit_turns_a_red_circle_blue_and_keeps_the_background(diffusion, red_circle):
    source, path = red_circle
    tuned = diffusion.finetune("a blue circle", init_image=path, source_text="a red circle", finetune_steps=20,
                               lr=1e-4, steps=50, seed=0, progress=False)
    edited = diffusion_image(tuned.pipeline, "", 0, init_image=path)  # applies the edit it was tuned for
    before, after = colour_shares(at_size(source, edited.size)), colour_shares(edited)
    assert after["blue"] > before["blue"] + 0.05 and after["red"] < before["red"] * 0.5, (before, after)
    assert background_change(source, edited) < 20


# --- Chinese prompts with the bilingual shapes-tiny-zh CLIP ---------------------------------------------------
# shapes-tiny-zh embeds images and English texts exactly as shapes-tiny does (trained with --lock-english), so a
# Chinese prompt guides as its English twin: the same judge, the same bar as the English tests above.

ZH_PROMPTS = [("一个红色的圆形", "red"), ("蓝色的正方形", "blue")]


@pytest.fixture(scope="module")
def vqgan_clip_zh() -> VQGANCLIPPipeline:
    """VQGAN-CLIP on the packaged shapes VQGAN and the bilingual CLIP."""
    return VQGANCLIPPipeline.from_pretrained("shapes-tiny", ["shapes-tiny-zh"], device="cpu")


@pytest.fixture(scope="module")
def pixels_clip_zh() -> PixelsCLIPPipeline:
    """Pixels-CLIP (Fourier pixels) guided by the bilingual CLIP."""
    return PixelsCLIPPipeline.from_pretrained("fft", ["shapes-tiny-zh"], device="cpu")


@pytest.fixture(scope="module")
def diffusion_zh() -> CLIPGuidedDiffusionPipeline:
    """CLIP-guided diffusion on the packaged shapes DDPM, guided by the bilingual CLIP."""
    return CLIPGuidedDiffusionPipeline.from_pretrained("shapes-tiny", ["shapes-tiny-zh"], device="cpu")


@pytest.mark.parametrize("prompt, colour", ZH_PROMPTS)
def test_vqgan_clip_chinese_prompt_gives_its_colour_for_most_seeds(vqgan_clip_zh, prompt, colour):
    found = [dominant_colour(vqgan_clip_zh(prompt, size=64, steps=100, seed=seed, cutn=16, progress=False,
                                           save_every=0).images[0]) for seed in SEEDS]
    assert found.count(colour) >= 2, found


@pytest.mark.parametrize("prompt, colour", ZH_PROMPTS)
def test_pixels_clip_chinese_prompt_gives_its_colour_for_most_seeds(pixels_clip_zh, prompt, colour):
    found = [dominant_colour(pixels_clip_zh(prompt, size=64, steps=100, seed=seed, cutn=16, progress=False,
                                            save_every=0).images[0]) for seed in SEEDS]
    assert found.count(colour) >= 2, found


def test_guided_diffusion_chinese_red_circle_is_red_for_most_seeds(diffusion_zh):
    found = [dominant_colour(diffusion_image(diffusion_zh, "一个红色的圆形", seed)) for seed in SEEDS]
    assert found.count("red") >= 2, found


def test_guided_diffusion_chinese_blue_square_at_the_cli_defaults_is_blue_for_most_seeds(diffusion_zh):
    # At the CLI's defaults (100 steps, 32 cutouts): blue, none, blue, exactly as for "a blue square"; at the
    # shorter settings above both languages miss (docs/shapes_models.md).
    found = [dominant_colour(diffusion_zh("蓝色的正方形", seed=seed, progress=False, save_every=0).images[0])
             for seed in SEEDS]
    assert found.count("blue") >= 2, found


def test_noise_optimisation_chinese_red_circle_is_red_for_most_seeds(diffusion_zh):
    noise = NoiseOptimizationPipeline(diffusion_zh.model, diffusion_zh.clip_models, sampler_steps=4)
    found = [dominant_colour(noise("一个红色的圆形", steps=30, seed=seed, cutn=16, progress=False,
                                   save_every=0).images[0]) for seed in SEEDS]
    assert found.count("red") >= 2, found
