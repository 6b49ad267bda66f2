"""The pixels generator and the generator registry: the interface every differentiable generator implements."""

from __future__ import annotations

import pytest
import torch

from generators.base import LatentGenerator
from generators.pixels import BALANCED_COLOURS, COLOUR_MAPS, LUCID_COLOURS, PixelGenerator, load_pixels
from generators.registry import GENERATORS, load_generator
from generators.vqgan import VQGAN, parse_config, tiny_vqgan_config
from guidance.errors import InvalidInputError


@pytest.mark.parametrize("parameterization", ["fft", "lucid", "rgb"])
def test_decode_gives_images_in_range_of_the_asked_size(parameterization):
    pixels = PixelGenerator(parameterization)
    latent = pixels.random_latent(2, 24, 40, torch.Generator().manual_seed(0))
    images = pixels.decode(latent)
    assert images.shape == (2, 3, 24, 40)
    assert 0 <= images.min() and images.max() <= 1


@pytest.mark.parametrize("parameterization", ["fft", "lucid", "rgb"])
def test_encode_inverts_decode(parameterization):
    pixels = PixelGenerator(parameterization)
    images = torch.rand(1, 3, 16, 20, generator=torch.Generator().manual_seed(1)) * 0.9 + 0.05
    assert torch.allclose(pixels.decode(pixels.encode(images)), images, atol=1e-5)


@pytest.mark.parametrize("parameterization", ["fft", "lucid"])
def test_fourier_start_is_a_near_grey_image_and_seeds_repeat(parameterization):
    pixels = PixelGenerator(parameterization)
    first = pixels.decode(pixels.random_latent(1, 32, 32, torch.Generator().manual_seed(3)))
    again = pixels.decode(pixels.random_latent(1, 32, 32, torch.Generator().manual_seed(3)))
    assert torch.equal(first, again)
    assert (first - 0.5).abs().max() < 0.05


@pytest.mark.parametrize("parameterization, decay", [("fft", 1.0), ("fft", 1.5), ("lucid", 1.0)])
def test_fourier_decode_matches_an_independent_float64_computation(parameterization, decay):
    """Lucid's recipe written out with numpy-style steps: scale by 1/f^decay, inverse FFT, /4, colour matrix,
    sigmoid."""
    pixels = PixelGenerator(parameterization, decay)
    latent = pixels.random_latent(1, 8, 6, torch.Generator().manual_seed(2)) * 50
    spectrum = torch.view_as_complex(latent.double())
    fy = torch.fft.fftfreq(8, dtype=torch.float64).view(-1, 1)
    fx = torch.fft.rfftfreq(6, dtype=torch.float64).view(1, -1)
    scale = 1 / torch.maximum((fx ** 2 + fy ** 2).sqrt(), torch.tensor(1 / 8, dtype=torch.float64)) ** decay
    image = torch.fft.irfft2(spectrum * scale, s=(8, 6), norm="backward") * (8 * 6) ** 0.5 / 4
    expected = torch.sigmoid(torch.einsum("bchw,dc->bdhw", image, COLOUR_MAPS[parameterization].double()))
    assert torch.allclose(pixels.decode(latent).double(), expected, atol=1e-5)


@pytest.mark.parametrize("parameterization", ["fft", "lucid", "rgb"])
def test_gradients_reach_the_latent(parameterization):
    pixels = PixelGenerator(parameterization)
    latent = pixels.random_latent(1, 8, 8, torch.Generator().manual_seed(0)).requires_grad_(True)
    pixels.decode(latent)[:, 0].mean().backward()
    assert latent.grad is not None and latent.grad.abs().sum() > 0


def test_balanced_colour_map_is_lucids_axes_at_equal_length():
    """Lucid's map: luminance axis of norm 1, chroma axes 0.28 and 0.13 (computed here from its published matrix);
    the balanced map: the same directions, each of norm 1, so an equal step on each axis changes pixels equally."""
    lucid_sqrt = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=torch.float64)
    norms = lucid_sqrt.norm(dim=0)
    assert torch.allclose(LUCID_COLOURS.double().norm(dim=0), norms / norms.max(), atol=1e-6)
    assert torch.allclose(LUCID_COLOURS.double().norm(dim=0), torch.tensor([1.0, 0.28, 0.13], dtype=torch.float64),
                          atol=0.01)
    assert torch.allclose(BALANCED_COLOURS.double().norm(dim=0), torch.ones(3, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(BALANCED_COLOURS.double(), lucid_sqrt / norms, atol=1e-6)
    assert PixelGenerator("fft").colour.equal(BALANCED_COLOURS) and PixelGenerator("lucid").colour.equal(LUCID_COLOURS)


def test_rgb_projection_keeps_pixels_in_range_and_fft_needs_none():
    rgb = PixelGenerator("rgb")
    latent = torch.tensor([[-0.5, 0.3, 1.7]]).view(1, 3, 1, 1).repeat(1, 1, 2, 2)
    assert rgb.project_(latent).min() == 0 and latent.max() == 1
    spectrum = torch.randn(1, 3, 4, 3, 2)
    assert torch.equal(PixelGenerator("fft").project_(spectrum.clone()), spectrum)


def test_size_factor_is_one_for_rgb_and_two_for_a_spectrum():
    assert PixelGenerator("rgb").factor == 1 and PixelGenerator("fft").factor == 2


def test_bad_parameterization_and_decay_are_one_line_errors():
    with pytest.raises(InvalidInputError, match="unknown pixel parameterization 'wavelet'"):
        PixelGenerator("wavelet")
    with pytest.raises(InvalidInputError, match="decay"):
        PixelGenerator("fft", decay=float("nan"))
    with pytest.raises(InvalidInputError, match=r"--spectrum-decay applies to the Fourier parameterizations \("):
        PixelGenerator("rgb", decay=1.5)


def test_registry_loads_each_kind_as_a_latent_generator(tmp_path):
    assert set(GENERATORS) >= {"vqgan", "pixels"}
    assert isinstance(load_generator("pixels", "rgb", device="cpu"), PixelGenerator)
    vqgan = load_generator("vqgan", "shapes-tiny", device="cpu")
    assert isinstance(vqgan, VQGAN) and isinstance(vqgan, LatentGenerator)
    assert isinstance(load_pixels("fft"), LatentGenerator)
    with pytest.raises(InvalidInputError, match="unknown generator kind 'gan'"):
        load_generator("gan", "x")


def test_vqgan_implements_the_interface():
    vqgan = VQGAN(parse_config(tiny_vqgan_config()))
    latent = vqgan.random_latent(1, 8, 8, torch.Generator().manual_seed(0))
    assert vqgan.decode(latent).shape == (1, 3, 8, 8)
    assert vqgan.encode(torch.rand(1, 3, 8, 8)).shape == latent.shape
    assert vqgan.device == torch.device("cpu")
