"""Noise optimisation's generator: starting noise -> a short checkpointed DDIM sampler -> images, and the norm
regulariser that keeps the noise Gaussian-like."""

from __future__ import annotations

import math

import pytest
import torch

from generators.diffusion import random_latent_model, random_pixel_model
from generators.diffusion.noise import NoiseGenerator, default_steps, norm_penalty, step_limit, trailing_timesteps
from generators.pixels import load_pixels
from generators.registry import load_generator
from guidance.errors import InvalidInputError
from training.shapes_world import render_shape_image


def test_norm_penalty_value_and_gradient_match_an_independent_float64_computation():
    latent = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 1.3
    latent.requires_grad_(True)
    norm_penalty(latent).backward()
    d = 3 * 8 * 8
    expected, gradients = 0.0, []
    for sample in latent.detach().double().reshape(2, -1):
        norm = math.sqrt(sum(v * v for v in sample.tolist()))
        expected += 0.5 * norm**2 - (d - 1) * math.log(norm)
        gradients.append(sample - (d - 1) * sample / norm**2)  # d/de of the above
    assert math.isclose(float(norm_penalty(latent.detach())), expected, rel_tol=1e-5)
    assert torch.allclose(latent.grad.double().reshape(2, -1), torch.stack(gradients), atol=1e-5)


def test_norm_penalty_is_lowest_on_the_gaussian_shell():
    direction = torch.randn(1, 3, 8, 8)
    direction = direction / direction.norm()
    shell = math.sqrt(3 * 8 * 8 - 1)
    values = {r: float(norm_penalty(direction * r)) for r in (0.5 * shell, shell, 1.5 * shell)}
    assert values[shell] < values[0.5 * shell] and values[shell] < values[1.5 * shell]


@pytest.mark.parametrize("kept", [False, True], ids=["free", "blended"])
def test_checkpointed_sampler_gives_the_same_gradient_as_plain_backprop(kept):
    """Also with images kept outside a mask (blended in before every step)."""
    model = random_pixel_model("tiny")
    noise = torch.randn(1, *model.sample_shape(32, 32), generator=torch.Generator().manual_seed(1))
    target = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:24, 8:24] = 1
    gradients = []
    for checkpointing in (True, False):
        generator = NoiseGenerator(model, steps=3, checkpointing=checkpointing)
        if kept:
            generator.keep_outside(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3)), mask)
        latent = noise.clone().requires_grad_(True)
        (generator.decode(latent) - target).square().mean().backward()
        gradients.append(latent.grad)
    assert gradients[0].abs().max() > 0
    assert torch.allclose(gradients[0], gradients[1], atol=1e-5, rtol=0)


def test_decode_gives_images_in_range_and_encode_gives_noise_of_the_latent_shape():
    generator = NoiseGenerator(random_pixel_model("tiny"), steps=2)
    latent = generator.random_latent(2, 32, 32, torch.Generator().manual_seed(0))
    with torch.no_grad():
        images = generator.decode(latent)
        assert images.shape == (2, 3, 32, 32) and images.min() >= 0 and images.max() <= 1
        assert generator.encode(images).shape == latent.shape
    assert float(generator.latent_penalty(latent)) == pytest.approx(0.01 * float(norm_penalty(latent)))


def test_trailing_timesteps_start_at_the_end_of_the_schedule():
    assert trailing_timesteps(1000, 1) == [999]
    assert trailing_timesteps(1000, 4) == [999, 749, 499, 249]


def test_a_few_step_model_refuses_many_steps_in_one_line():
    model = random_pixel_model("tiny")
    model.info["distilled_steps"] = 1
    assert step_limit(model) == 1 and default_steps(model) == 1
    with pytest.raises(InvalidInputError) as error:
        NoiseGenerator(model, steps=50)
    message = str(error.value)
    assert "\n" not in message and "1 to 1 steps" in message and "got 50 sampler steps; ask for 1" in message


def test_an_unconditional_model_refuses_cfg_scale():
    with pytest.raises(InvalidInputError, match="cfg-scale"):
        NoiseGenerator(random_pixel_model("tiny"), cfg_scale=3.0)


def test_a_text_conditioned_model_samples_its_prompt_with_classifier_free_guidance():
    model = random_latent_model("tiny")
    model.info["distilled_steps"] = 1  # like sd-turbo: one step from pure noise
    generator = NoiseGenerator(model, prompt="a red circle", cfg_scale=2.0)
    assert generator.timesteps == [model.num_train_timesteps - 1] and generator.condition.negative is not None
    latent = generator.random_latent(1, 32, 32, torch.Generator().manual_seed(0)).requires_grad_(True)
    generator.decode(latent).mean().backward()
    assert latent.grad is not None and torch.isfinite(latent.grad).all()


def test_the_registry_loads_the_shapes_ddpm_as_a_noise_generator_and_others_have_no_penalty():
    generator = load_generator("noise", "shapes-tiny", device="cpu", steps=2)
    assert isinstance(generator, NoiseGenerator) and generator.factor == generator.model.size_factor
    assert float(load_pixels("fft").latent_penalty(torch.randn(1, 3, 4, 4))) == 0.0


def test_kept_images_are_blended_in_outside_the_mask_so_the_inside_is_drawn_to_fit():
    """Blended Diffusion inside the short sampler, on the shipped shapes DDPM: with the grey render of a blue
    circle kept outside a centre square, 8 noises decode to that render outside (where free samples are their own
    pictures) and to a grey-like ring just inside the square (where free samples draw their own backgrounds)."""
    generator = load_generator("noise", "shapes-tiny", device="cpu", steps=4)
    source = torch.from_numpy(render_shape_image("blue", "circle", image_size=32)).permute(2, 0, 1).float()[None] / 255
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 6:26, 6:26] = 1
    ring = mask.bool().clone()
    ring[..., 9:23, 9:23] = False
    latent = generator.random_latent(8, 32, 32, torch.Generator().manual_seed(0))
    with torch.no_grad():
        free = generator.decode(latent)
        generator.keep_outside(source, mask)
        kept = generator.decode(latent)
        generator.keep_outside(source, torch.ones(1, 1, 32, 32))  # nothing kept: the free samples, exactly
        assert torch.equal(generator.decode(latent), free)
        generator.keep_outside(None, None)
        assert generator.known is None and torch.equal(generator.decode(latent), free)

    def levels(difference: torch.Tensor, where: torch.Tensor) -> float:
        return float(difference.abs().mul(255).masked_select(where.expand_as(difference)).mean())

    outside = ~mask.bool()
    assert levels(kept - source, outside) < 15 < 50 < levels(free - source, outside)
    assert levels(kept - 0.5, ring) < 0.5 * levels(free - 0.5, ring)


def test_a_latent_model_keeps_images_at_its_latent_size():
    generator = NoiseGenerator(random_latent_model(seed=3), steps=2)
    generator.keep_outside(torch.rand(1, 3, 32, 32), torch.ones(1, 1, 32, 32))
    samples, mask = generator.known
    channels, height, width = generator.model.sample_shape(32, 32)
    assert samples.shape == (1, channels, height, width) and mask.shape == (1, 1, height, width) and height < 32
    with torch.no_grad():
        assert generator.decode(generator.random_latent(1, 32, 32)).shape == (1, 3, 32, 32)


def test_encode_puts_rendered_shapes_on_the_gaussian_shell():
    """Plain DDIM inversion in the sampler's 4 long steps leaves the noise far inside the shell (RMS about 0.3),
    where neither the sampler nor the norm regulariser expects it; the refined steps put it near RMS 1."""
    from generators.diffusion import load_diffusion
    from generators.diffusion.sampling import ddim_invert
    from training.shapes_world import COLOURS, SHAPES

    generator = NoiseGenerator(load_diffusion("shapes-tiny", "cpu"), 4)
    images = torch.stack([torch.from_numpy(render_shape_image(colour, shape, image_size=32)).permute(2, 0, 1)
                          for colour in list(COLOURS)[::2] for shape in SHAPES]).float().div(255)
    with torch.no_grad():
        refined = generator.encode(images)
        plain = ddim_invert(generator.model, generator.model.from_image(images), generator.timesteps[::-1],
                            generator.condition, 1.0)
    rms = {name: noise.flatten(1).square().mean(1).sqrt() for name, noise in (("refined", refined), ("plain", plain))}
    assert rms["plain"].max() < 0.5
    assert rms["refined"].min() > 0.8 and rms["refined"].max() < 1.2
