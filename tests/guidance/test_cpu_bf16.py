"""The CPU bf16 path: open_clip's image tower runs sequence-first (same maths), and a bf16 VQGAN-CLIP step on tiny
models gives a finite loss and a gradient that reaches the latent."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from generators.vqgan import VQGAN, parse_config, tiny_vqgan_config
from guidance.backends.openclip import sequence_first
from guidance.runtime import autocast


def test_loaded_image_tower_runs_sequence_first_with_unchanged_features(tiny_clip) -> None:
    visual = tiny_clip.model.visual
    assert visual.transformer.batch_first is False
    assert all(block.attn.batch_first is False for block in visual.transformer.resblocks)
    batch_first = copy.deepcopy(visual)
    batch_first.transformer.batch_first = True
    for block in batch_first.transformer.resblocks:
        block.attn.batch_first = True
    pixels = torch.rand(5, 3, 32, 32)
    torch.testing.assert_close(visual(pixels), batch_first(pixels), rtol=1e-5, atol=1e-5)
    sequence_first(batch_first.transformer)
    assert batch_first.transformer.batch_first is False


def test_bf16_step_has_finite_loss_and_latent_gradient_close_to_fp32(tiny_clip) -> None:
    torch.manual_seed(0)
    vqgan = VQGAN(parse_config(tiny_vqgan_config(attn_resolutions=(32,))))
    z = vqgan.random_latent(1, 32, 32, torch.Generator().manual_seed(0))
    target = F.normalize(torch.randn(1, tiny_clip.embed_dim), dim=-1)
    results = {}
    for precision in ("fp32", "bf16"):
        latent = z.clone().requires_grad_(True)
        with autocast(torch.device("cpu"), precision):
            images = vqgan.decode(latent).float()
            loss = 1 - (tiny_clip.encode_image(images) @ target.T).mean()
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(latent.grad).all() and latent.grad.abs().sum() > 0
        results[precision] = (loss.detach(), latent.grad)
    (loss32, grad32), (loss16, grad16) = results["fp32"], results["bf16"]
    assert abs(loss16 - loss32) < 0.02
    assert F.cosine_similarity(grad16.flatten(), grad32.flatten(), dim=0) > 0.9


def test_bf16_decoder_weights_match_plain_autocast_and_follow_weight_changes() -> None:
    torch.manual_seed(0)
    vqgan = VQGAN(parse_config(tiny_vqgan_config(attn_resolutions=(32,))))
    z = vqgan.random_latent(1, 32, 32, torch.Generator().manual_seed(0)).requires_grad_(True)
    with autocast(torch.device("cpu"), "bf16"):
        cast_once = vqgan.decode(z).float()
        assert vqgan.decoder_weights(z.device)["conv_in.weight"].dtype == torch.bfloat16
        reference = (vqgan.decoder(vqgan.post_quant_conv(z)).float() + 1) / 2  # autocast casting per op
    torch.testing.assert_close(cast_once, reference.clamp(0, 1), rtol=0, atol=0.02)
    assert vqgan.decoder_weights(z.device) is None  # no autocast: the fp32 weights
    cast_once.sum().backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    with torch.no_grad():
        vqgan.decoder.conv_out.bias.add_(1.0)
    with autocast(torch.device("cpu"), "bf16"):
        assert vqgan.decoder_weights(z.device)["conv_out.bias"].float().sub(vqgan.decoder.conv_out.bias).abs().max() < 0.01
