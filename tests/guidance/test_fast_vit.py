"""The CPU kernels swapped into open_clip's image tower compute what the stock modules do, values and gradients."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from guidance import load_clip
from guidance.backends.fast_vit import ShortSequenceAttention, UnfoldedPatchEmbedding, speed_up_image_tower


@pytest.fixture(scope="module")
def clips(tiny_clip_config) -> tuple:
    """A tiny ViT CLIP as loaded (kernels swapped in) and a copy with the stock modules back."""
    torch.manual_seed(0)
    fast = load_clip("fast-vit-test", architecture=tiny_clip_config)
    stock = copy.deepcopy(fast)
    stock.model.visual.conv1.__class__ = nn.Conv2d
    for block in stock.model.visual.transformer.resblocks:
        block.attn.__class__ = nn.MultiheadAttention
    return fast, stock


def image_and_grad(clip, images: torch.Tensor, precision: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The image embeddings and the gradient of their sum with respect to the images."""
    images = images.detach().clone().requires_grad_()
    with torch.autocast("cpu", precision or torch.bfloat16, enabled=precision is not None):
        embedded = clip.encode_image(images).float()
    embedded.sum().backward()
    return embedded.detach(), images.grad


def test_the_loaded_image_tower_uses_the_fast_kernels_and_keeps_its_state_dict_keys(clips):
    fast, stock = clips
    assert type(fast.model.visual.conv1) is UnfoldedPatchEmbedding
    assert all(type(b.attn) is ShortSequenceAttention for b in fast.model.visual.transformer.resblocks)
    assert list(fast.model.state_dict()) == list(stock.model.state_dict())


@pytest.mark.parametrize("precision, tolerance", [(None, 1e-5), (torch.bfloat16, 3e-2)])
def test_values_and_gradients_match_the_stock_modules(clips, precision, tolerance):
    fast, stock = clips
    images = torch.rand(3, 3, 40, 48)  # resized to the tower's size, as in guidance
    fast_out, fast_grad = image_and_grad(fast, images, precision)
    stock_out, stock_grad = image_and_grad(stock, images, precision)
    assert torch.allclose(fast_out, stock_out, atol=tolerance, rtol=tolerance)
    assert (fast_grad - stock_grad).norm() <= tolerance * stock_grad.norm()


def test_other_patch_embeddings_and_attention_calls_are_left_to_the_stock_code():
    conv = nn.Conv2d(3, 8, kernel_size=4, stride=2)
    visual = nn.Module()
    visual.conv1 = conv
    speed_up_image_tower(visual)
    assert type(conv) is nn.Conv2d  # overlapping patches and a bias: not a patch embedding
    attention = nn.MultiheadAttention(16, 2)
    attention.__class__ = ShortSequenceAttention
    tokens = torch.randn(5, 2, 16)
    mask = torch.triu(torch.ones(5, 5, dtype=torch.bool), 1)
    with torch.autocast("cpu", torch.bfloat16):
        masked, _ = attention(tokens, tokens, tokens, need_weights=False, attn_mask=mask)
        expected, _ = nn.MultiheadAttention.forward(attention, tokens, tokens, tokens, need_weights=False, attn_mask=mask)
    assert torch.equal(masked, expected)
