"""The taming-compatible VQGAN: gradient tricks, shapes, taming key names, and every way of loading weights."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
import yaml

from generators.vqgan import (
    BUILTIN_VQGANS,
    KNOWN_VQGANS,
    VQGAN,
    clamp_with_grad,
    load_vqgan,
    nearest_codes,
    parse_config,
    quantize_straight_through,
    save_vqgan,
    tiny_vqgan_config,
)
from guidance.errors import InvalidInputError, ModelUnavailableError

# The published configs/model.yaml of vqgan_imagenet_f16_16384 (taming-transformers), loss section trimmed.
F16_16384_YAML = """
model:
  base_learning_rate: 4.5e-06
  target: taming.models.vqgan.VQModel
  params:
    embed_dim: 256
    n_embed: 16384
    monitor: val/rec_loss
    ddconfig:
      double_z: false
      z_channels: 256
      resolution: 256
      in_channels: 3
      out_ch: 3
      ch: 128
      ch_mult: [1, 1, 2, 2, 4]
      num_res_blocks: 2
      attn_resolutions: [16]
      dropout: 0.0
    lossconfig:
      target: taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator
"""

# Key names (and shapes) of the real taming checkpoints, as used by public conversion scripts and loaders.
TAMING_KEYS = {
    "encoder.conv_in.weight": (128, 3, 3, 3),
    "encoder.down.0.block.0.norm1.weight": (128,),
    "encoder.down.2.block.0.nin_shortcut.weight": (256, 128, 1, 1),
    "encoder.down.3.downsample.conv.weight": (256, 256, 3, 3),
    "encoder.down.4.attn.1.q.weight": (512, 512, 1, 1),
    "encoder.down.4.attn.1.proj_out.bias": (512,),
    "encoder.mid.attn_1.norm.weight": (512,),
    "encoder.mid.block_2.conv2.weight": (512, 512, 3, 3),
    "encoder.norm_out.weight": (512,),
    "encoder.conv_out.weight": (256, 512, 3, 3),
    "quant_conv.weight": (256, 256, 1, 1),
    "quantize.embedding.weight": (16384, 256),
    "post_quant_conv.weight": (256, 256, 1, 1),
    "decoder.conv_in.weight": (512, 256, 3, 3),
    "decoder.mid.block_1.norm1.weight": (512,),
    "decoder.up.4.attn.1.q.weight": (512, 512, 1, 1),
    "decoder.up.4.attn.2.proj_out.weight": (512, 512, 1, 1),
    "decoder.up.4.block.2.conv1.weight": (512, 512, 3, 3),
    "decoder.up.4.upsample.conv.weight": (512, 512, 3, 3),
    "decoder.up.3.block.0.nin_shortcut.weight": (256, 512, 1, 1),
    "decoder.up.1.upsample.conv.weight": (128, 128, 3, 3),
    "decoder.up.0.block.2.norm2.weight": (128,),
    "decoder.norm_out.bias": (128,),
    "decoder.conv_out.bias": (3,),
}


def spring_trap(marker: str) -> None:
    """What a malicious pickle would run: leaves a file behind."""
    Path(marker).write_text("sprung")


class Trap:
    """A Lightning-callback-like object whose unpickling calls `spring_trap`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return spring_trap, (str(self.marker),)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Empty cache, no network."""
    monkeypatch.setenv("CLIP_GUIDANCE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def tiny_model(seed: int = 0, **overrides: object) -> VQGAN:
    """A tiny random VQGAN with attention at 32 px, so every block kind runs."""
    torch.manual_seed(seed)
    return VQGAN(parse_config(tiny_vqgan_config(attn_resolutions=(32,), **overrides)))


@pytest.fixture(scope="module")
def model() -> VQGAN:
    return tiny_model()


def test_straight_through_forward_is_nearest_code_and_gradient_passes_unchanged() -> None:
    codebook = torch.randn(10, 4)
    z = torch.randn(2, 4, 3, 5, requires_grad=True)
    quantized = quantize_straight_through(z, codebook)
    flat = z.detach().movedim(1, -1).reshape(-1, 4)
    expected = codebook[torch.cdist(flat, codebook).argmin(1)].view(2, 3, 5, 4).movedim(-1, 1)
    torch.testing.assert_close(quantized, expected)
    assert torch.equal(nearest_codes(z, codebook), torch.cdist(flat, codebook).argmin(1).view(2, 3, 5))

    weights = torch.randn_like(z)
    (quantized.sin() * weights).sum().backward()
    at_quantized = quantized.detach().requires_grad_()
    (at_quantized.sin() * weights).sum().backward()
    torch.testing.assert_close(z.grad, at_quantized.grad)


def test_clamp_keeps_inward_gradients_and_drops_outward_ones() -> None:
    x = torch.tensor([-0.5, -0.5, 0.5, 0.5, 1.5, 1.5], requires_grad=True)
    upstream = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -1.0])
    out = clamp_with_grad(x, 0.0, 1.0)
    torch.testing.assert_close(out.detach(), x.detach().clamp(0, 1))
    out.backward(upstream)
    # Below range: a descent step (x - grad) moves inward only when grad < 0; above range only when grad > 0.
    torch.testing.assert_close(x.grad, torch.tensor([0.0, -1.0, 1.0, -1.0, 1.0, 0.0]))


def test_project_clamps_the_latent_to_codebook_range(model: VQGAN) -> None:
    z = (torch.randn(1, model.embed_dim, 4, 4) * 100).requires_grad_()
    returned = model.project_(z)
    assert returned is z
    low, high = model.codebook.amin(0), model.codebook.amax(0)
    assert torch.all(z.movedim(1, -1) >= low) and torch.all(z.movedim(1, -1) <= high)


def test_decode_gives_images_in_unit_range_and_gradients_reach_z(model: VQGAN) -> None:
    assert model.factor == 2
    z = model.random_latent(2, 8, 12, generator=torch.Generator().manual_seed(1)).requires_grad_()
    images = model.decode(z)
    assert images.shape == (2, 3, 8, 12)
    assert images.min() >= 0 and images.max() <= 1
    images.mean().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert all(parameter.grad is None for parameter in model.parameters())


def test_encode_decode_shapes(model: VQGAN) -> None:
    images = torch.rand(2, 3, 8, 12)
    z = model.encode(images)
    assert z.shape == (2, *model.latent_shape(8, 12)) == (2, 16, 4, 6)
    assert model.decode(z).shape == images.shape


def test_decode_runs_under_autocast_and_channels_last() -> None:
    model = tiny_model().to(memory_format=torch.channels_last)
    z = model.random_latent(1, 8, 8).to(memory_format=torch.channels_last).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        images = model.decode(z)
    images.float().sum().backward()
    assert images.shape == (1, 3, 8, 8) and z.grad is not None


def test_random_latent_uses_codebook_vectors_and_checks_size(model: VQGAN) -> None:
    first = model.random_latent(1, 8, 8, generator=torch.Generator().manual_seed(3))
    again = model.random_latent(1, 8, 8, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first, again)
    codes = model.codebook[nearest_codes(first, model.codebook)].movedim(-1, 1)
    torch.testing.assert_close(first, codes)
    with pytest.raises(InvalidInputError, match="multiples of 2"):
        model.random_latent(1, 9, 8)


def test_gumbel_config_builds_and_decodes() -> None:
    gumbel = VQGAN(parse_config(tiny_vqgan_config(gumbel=True, n_embed=32)))
    keys = gumbel.state_dict().keys()
    assert {"quantize.proj.weight", "quantize.embed.weight"} <= keys and "quantize.embedding.weight" not in keys
    assert gumbel.codebook.shape == (32, 16)
    z = gumbel.random_latent(1, 8, 8).requires_grad_()
    gumbel.decode(z).sum().backward()
    assert z.grad is not None


def test_real_f16_16384_config_has_taming_key_names(tmp_path: Path) -> None:
    (tmp_path / "model.yaml").write_text(F16_16384_YAML)
    config = parse_config(tmp_path / "model.yaml")
    with torch.device("meta"):
        big = VQGAN(config)
    shapes = {key: tuple(value.shape) for key, value in big.state_dict().items()}
    assert {key: shapes.get(key) for key in TAMING_KEYS} == TAMING_KEYS
    assert big.factor == 16 and big.n_embed == 16384
    assert not any("temb" in key for key in shapes)
    assert "encoder.down.4.downsample.conv.weight" not in shapes and "decoder.up.0.upsample.conv.weight" not in shapes
    assert config.to_taming()["model"]["params"] == KNOWN_VQGANS["vqgan_imagenet_f16_16384"].config["model"]["params"]


def test_params_only_config_is_accepted() -> None:
    params = tiny_vqgan_config()["model"]["params"]
    config = parse_config(params)
    assert not config.gumbel and config.n_embed == 64
    assert parse_config({**params, "temperature_scheduler_config": {}}).gumbel


def test_bad_configs_are_invalid_input(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="n_embed"):
        parse_config({"embed_dim": 4, "ddconfig": {}})
    with pytest.raises(InvalidInputError, match="unsupported VQGAN target"):
        parse_config({"model": {"target": "x.Unet", "params": tiny_vqgan_config()["model"]["params"]}})
    (tmp_path / "broken.yaml").write_text("model: [unclosed")
    with pytest.raises(InvalidInputError):
        parse_config(tmp_path / "broken.yaml")


def decoded(model: VQGAN) -> torch.Tensor:
    """A fixed decode to compare models."""
    return model.decode(model.random_latent(1, 8, 8, generator=torch.Generator().manual_seed(5)))


def test_safetensors_round_trip_needs_no_config(tmp_path: Path, model: VQGAN) -> None:
    save_vqgan(model, tmp_path / "tiny.safetensors")
    loaded = load_vqgan(tmp_path / "tiny.safetensors")
    assert torch.equal(decoded(loaded), decoded(model))
    assert not any(parameter.requires_grad for parameter in loaded.parameters()) and not loaded.training


def write_taming_layout(root: Path, model: VQGAN, marker: Path) -> Path:
    """Write `ckpts/last.ckpt` (Lightning-like, with loss weights and a code-running object) + `configs/model.yaml`."""
    (root / "ckpts").mkdir(parents=True)
    (root / "configs").mkdir()
    state = {**model.state_dict(), "loss.discriminator.main.0.weight": torch.randn(4, 3, 4, 4),
             "loss.perceptual_loss.net.slice1.0.weight": torch.randn(4, 3, 3, 3)}
    torch.save({"state_dict": state, "epoch": 1, "callbacks": {"ModelCheckpoint": Trap(marker)}},
               root / "ckpts" / "last.ckpt")
    (root / "configs" / "model.yaml").write_text(yaml.safe_dump(model.config.to_taming()))
    return root


def test_lightning_checkpoint_with_yaml_loads_safely(tmp_path: Path, model: VQGAN) -> None:
    marker = tmp_path / "sprung"
    root = write_taming_layout(tmp_path / "run", model, marker)
    by_files = load_vqgan(root / "ckpts" / "last.ckpt", config=root / "configs" / "model.yaml")
    by_directory = load_vqgan(root)
    assert not marker.exists()
    assert torch.equal(decoded(by_files), decoded(model))
    assert torch.equal(decoded(by_directory), decoded(model))
    assert not any(parameter.requires_grad for parameter in by_files.parameters())


def test_config_dict_overrides_and_mismatch_is_reported(tmp_path: Path, model: VQGAN) -> None:
    save_vqgan(model, tmp_path / "tiny.safetensors")
    assert load_vqgan(tmp_path / "tiny.safetensors", config=model.config.to_taming()).n_embed == 64
    with pytest.raises(InvalidInputError, match="does not fit") as caught:
        load_vqgan(tmp_path / "tiny.safetensors", config=tiny_vqgan_config(n_embed=32))
    assert "quantize.embedding.weight" in str(caught.value) and "\n" not in str(caught.value)


def test_checkpoint_without_config_says_what_to_pass(tmp_path: Path, model: VQGAN) -> None:
    torch.save({"state_dict": model.state_dict()}, tmp_path / "lonely.ckpt")
    with pytest.raises(InvalidInputError, match="--vqgan-config"):
        load_vqgan(tmp_path / "lonely.ckpt")
    (tmp_path / "lonely.yaml").write_text(yaml.safe_dump(model.config.to_taming()))
    assert torch.equal(decoded(load_vqgan(tmp_path / "lonely.ckpt")), decoded(model))


def test_builtin_models_load_by_name(tmp_path: Path, model: VQGAN, monkeypatch: pytest.MonkeyPatch) -> None:
    save_vqgan(model, tmp_path / "packaged.safetensors")
    monkeypatch.setitem(BUILTIN_VQGANS, "packaged-tiny", tmp_path / "packaged.safetensors")
    assert torch.equal(decoded(load_vqgan("packaged-tiny")), decoded(model))


def test_hub_repo_in_taming_layout(tmp_path: Path, model: VQGAN, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("guidance.checkpoints.host_reachable", lambda url: True)  # the hub is faked below
    repo = write_taming_layout(tmp_path / "repo", model, tmp_path / "sprung")

    def fake_hf_hub_download(repo_id: str, filename: str, *, local_dir: Path) -> str:
        assert repo_id == "someone/vqgan-mirror"
        target = Path(local_dir) / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((repo / filename).read_bytes())
        return str(target)

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr("huggingface_hub.hf_hub_download", fake_hf_hub_download)
    assert torch.equal(decoded(load_vqgan("hf://someone/vqgan-mirror")), decoded(model))
    with pytest.raises(InvalidInputError, match="malformed"):
        load_vqgan("hf://someone")


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(InvalidInputError) as caught:
        load_vqgan("vqgan_imagenet_f16_99")
    assert all(name in str(caught.value) for name in KNOWN_VQGANS)


def test_missing_path_is_model_unavailable(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError, match="--vqgan-config"):
        load_vqgan(tmp_path / "missing" / "last.ckpt")


def test_known_name_offline_fails_fast_in_one_line() -> None:
    start = time.monotonic()
    with pytest.raises(ModelUnavailableError) as caught:
        load_vqgan("vqgan_imagenet_f16_16384")
    message = str(caught.value)
    assert time.monotonic() - start < 5
    assert "vqgan_imagenet_f16_16384" in message and "--vqgan path/to/last.ckpt" in message and "\n" not in message


def test_corrupt_cached_download_says_how_to_recover(tmp_path: Path) -> None:
    cached = tmp_path / "cache" / "vqgan" / "vqgan_gumbel_f8.ckpt"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"truncated download")
    with pytest.raises(InvalidInputError, match="delete it"):
        load_vqgan("vqgan_gumbel_f8")
