"""Diffusers model wrappers: loading and saving both folder layouts, offline failures, the latent interface,
classifier-free guidance, and the guided step's NaN handling. Tiny random-weight models built from configs."""

from __future__ import annotations

import json
import time

import pytest
import torch
from diffusers import DDPMPipeline

from generators.diffusion import (BUILTIN_DIFFUSION_MODELS, ClipConditionedDiffusion, DiffusionModel, TextCondition,
                                  backward_eps, clamp_rms, guided_eps, inversion_timesteps, known_diffusion_names, load_diffusion,
                                  random_clip_conditioned_model, random_latent_model, random_pixel_model,
                                  save_diffusion)
from generators.diffusion.configs import DDPM_SCHEDULER
from guidance import InvalidInputError, ModelUnavailableError


def eps_of(model: DiffusionModel, x: torch.Tensor, t: int, condition=None) -> torch.Tensor:
    with torch.no_grad():
        return model.predict_eps(x, t, condition)


def test_pixel_model_saves_and_reloads_in_the_pipeline_layout(tmp_path):
    model = random_pixel_model(seed=1)
    folder = save_diffusion(model, tmp_path / "pixel")
    assert (folder / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "DDPMPipeline"
    loaded = load_diffusion(folder)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(eps_of(loaded, x, 500), eps_of(model, x, 500), atol=1e-5)
    assert loaded.name == str(folder.resolve()) and loaded.native_size == (32, 32) and loaded.size_factor == 2
    assert isinstance(DDPMPipeline.from_pretrained(folder).unet, type(model.unet))  # diffusers reads it too


def test_root_layout_of_google_ddpm_repos_loads(tmp_path):
    model = random_pixel_model(seed=2)
    model.unet.save_pretrained(tmp_path)  # config.json and weights at the root, as in google/ddpm-*-256
    (tmp_path / "scheduler_config.json").write_text(json.dumps(DDPM_SCHEDULER))
    loaded = load_diffusion(tmp_path)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(eps_of(loaded, x, 10), eps_of(model, x, 10), atol=1e-5)
    assert abs(loaded.alpha_bar(999) - model.alpha_bar(999)) < 1e-12


def test_latent_model_roundtrip_interface_and_classifier_free_guidance(tmp_path):
    model = random_latent_model(seed=3)
    loaded = load_diffusion(save_diffusion(model, tmp_path / "latent"))
    assert loaded.text_conditioned and loaded.size_factor == 16 and loaded.sample_shape(32, 48) == (4, 6, 4)
    x = torch.randn(2, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    plain = loaded.condition("a red circle")
    assert torch.allclose(eps_of(loaded, x, 300, plain), eps_of(model, x, 300, model.condition("a red circle")))
    guided = loaded.condition("a red circle", "blurry", 3.0)
    unconditional = eps_of(loaded, x, 300, loaded.condition("blurry"))
    expected = unconditional + 3.0 * (eps_of(loaded, x, 300, plain) - unconditional)
    assert torch.allclose(eps_of(loaded, x, 300, guided), expected, atol=1e-5)
    images = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        latents = loaded.from_image(images)
        assert latents.shape == (1, 4, 4, 4) and loaded.to_image(latents).shape == (1, 3, 32, 32)


def test_v_prediction_is_converted_to_noise():
    model = random_pixel_model(seed=4)
    v_model = type(model)(model.unet, {**model.scheduler_config, "prediction_type": "v_prediction"}, "v")
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    raw, alpha = eps_of(model, x, 700), model.alpha_bar(700)
    assert torch.allclose(eps_of(v_model, x, 700), alpha**0.5 * raw + (1 - alpha) ** 0.5 * x, atol=1e-6)


def test_unknown_hub_model_offline_fails_fast_in_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    with pytest.raises(ModelUnavailableError) as error:
        load_diffusion("nobody/no-such-diffusion-model")
    assert time.monotonic() - started < 10
    message = str(error.value)
    assert "nobody/no-such-diffusion-model" in message and "offline" in message and "--model path/to/folder" in message
    assert "\n" not in message


@pytest.mark.parametrize("spec, error, words", [
    ("no_such_model", ModelUnavailableError, "neither a folder"),
    ("./missing/folder", ModelUnavailableError, "neither a folder"),
    ("", InvalidInputError, "empty"),
])
def test_bad_model_names_say_what_to_pass(spec, error, words):
    with pytest.raises(error, match=words) as info:
        load_diffusion(spec)
    assert "\n" not in str(info.value)


def test_folder_without_a_model_is_reported(tmp_path):
    with pytest.raises(ModelUnavailableError, match="no diffusers model in"):
        load_diffusion(tmp_path)


def test_nan_gradient_is_dropped_and_finite_one_is_clamped():
    model = random_pixel_model(seed=5)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    plain = eps_of(model, x, 400)
    eps, loss, finite = guided_eps(model, x, 400, None, lambda images: images.sum() * float("nan"))
    assert not finite and torch.isnan(loss) and torch.equal(eps, plain)
    eps, _, finite = guided_eps(model, x, 400, None, lambda images: 1e6 * images.square().sum(), clamp_grad=0.05)
    shift = (eps - plain) / (1 - model.alpha_bar(400)) ** 0.5
    assert finite and torch.allclose(shift.square().mean(dim=(1, 2, 3)).sqrt(), torch.full((2,), 0.05), rtol=1e-3)


def test_backward_guidance_moves_the_estimate_smoothly_where_the_gradient_is_pixel_noise():
    """A loss whose gradient is pixel noise (as CLIP's through cutouts is at full resolution): Adam on every element
    speckles the estimate; on the coarse grid the move is smooth. A smooth target (a uniform colour) is reached
    either way. The sides need not divide by the downscale."""
    model = random_pixel_model(seed=5)
    x = torch.randn(1, 3, 30, 30, generator=torch.Generator().manual_seed(0))
    plain, alpha = eps_of(model, x, 400), model.alpha_bar(400)
    signs = torch.randint(0, 2, (1, 3, 30, 30), generator=torch.Generator().manual_seed(1)).float() * 2 - 1

    def moved(loss_fn, downscale):
        eps, _ = backward_eps(model, x, 400, plain, loss_fn, steps=5, lr=0.1, downscale=downscale)
        assert eps.shape == plain.shape
        return (plain - eps) / (alpha / (1 - alpha)) ** 0.5  # the move of the clean estimate

    def roughness(delta):
        return (delta.diff(dim=-1).abs().mean() + delta.diff(dim=-2).abs().mean()).item()

    noise_loss = lambda images: (images * signs).sum()
    speckle, smooth = moved(noise_loss, 1), moved(noise_loss, 4)
    assert speckle.abs().mean() > 0.4 and roughness(speckle) > 0.6  # every pixel moved by about lr * steps
    assert roughness(smooth) < 0.25 * roughness(speckle)
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    colour_loss = lambda images: (images - red).square().mean()
    x0 = model.predict_x0(x, 400, plain)
    before = colour_loss(model.to_image(x0)).item()
    for downscale in (1, 4):
        after = colour_loss(model.to_image(x0 + moved(colour_loss, downscale))).item()
        assert after < before - 0.1


def test_clamp_rms_leaves_small_and_zero_gradients_alone():
    small = torch.full((1, 2, 2), 0.01)
    assert torch.equal(clamp_rms(small, 0.05), small)
    assert torch.equal(clamp_rms(torch.zeros(1, 2, 2), 0.05), torch.zeros(1, 2, 2))


def test_known_names_list_the_packaged_models_first_without_repeats():
    names = known_diffusion_names()
    assert names[:len(BUILTIN_DIFFUSION_MODELS)] == list(BUILTIN_DIFFUSION_MODELS) and "google/ddpm-cat-256" in names
    assert len(names) == len(set(names))


def test_inversion_mirrors_the_run_or_spaces_its_own_steps():
    run = [900, 800, 700, 600]
    assert inversion_timesteps(run) == [600, 700, 800, 900]
    assert inversion_timesteps(run, 2) == [600, 900] and inversion_timesteps(run, 7)[-1] == 900


def test_clip_conditioned_model_roundtrip_and_classifier_free_guidance(tmp_path):
    model = random_clip_conditioned_model(4)
    loaded = load_diffusion(save_diffusion(model, tmp_path / "conditioned"))
    assert isinstance(loaded, ClipConditionedDiffusion) and loaded.text_conditioned and loaded.native_size == (32, 32)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    red = eps_of(loaded, x, 400, loaded.condition("a red circle"))
    assert torch.allclose(red, eps_of(model, x, 400, model.condition("a red circle")), atol=1e-5)
    vector = loaded.encoder.encode_text(["a red circle"]) * 4.0
    with torch.no_grad():
        assert torch.allclose(red, loaded.unet(x, loaded.timestep_values[400], class_labels=vector.expand(2, -1)).sample)
    unconditional = eps_of(loaded, x, 400, loaded.condition(""))  # the empty text is the zero vector
    assert torch.allclose(unconditional, eps_of(loaded, x, 400, TextCondition(torch.zeros(1, 128))))
    guided = eps_of(loaded, x, 400, loaded.condition("a red circle", "", 3.0))
    assert torch.allclose(guided, unconditional + 3.0 * (red - unconditional), atol=1e-5)
    negative = eps_of(loaded, x, 400, loaded.condition("a blue square"))
    assert torch.allclose(eps_of(loaded, x, 400, loaded.condition("a red circle", "a blue square", 2.0)),
                          negative + 2.0 * (red - negative), atol=1e-5)
    with pytest.raises(ValueError, match="needs a condition"):
        loaded.predict_eps(x, 400)


def test_clip_conditioned_folder_without_its_clip_is_one_line(tmp_path):
    folder = save_diffusion(random_clip_conditioned_model(4), tmp_path / "conditioned")
    (folder / "clip_guidance.json").write_text("{}")
    with pytest.raises(InvalidInputError, match="names no conditioning CLIP") as error:
        load_diffusion(folder)
    assert "\n" not in str(error.value)
