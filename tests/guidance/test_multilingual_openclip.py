"""open_clip's multilingual models (xlm-roberta-base-ViT-B-32, nllb-clip-base, nllb-clip-base-siglip) on tiny
configs: their own text settings with the Hugging Face text tower and tokenizer read from a local folder, since
the real ones come from the hub; and the one-line error when the hub is out of reach."""

from __future__ import annotations

import copy
from pathlib import Path

import open_clip
import pytest
import torch
import transformers

import transformers_models as tiny_models  # tests/helpers
from guidance import ModelUnavailableError, load_clip, zero_shot_classify
from guidance.clip_models import clip_source


MODELS = ["xlm-roberta-base-ViT-B-32", "nllb-clip-base", "nllb-clip-base-siglip"]
TEXT_TOWER = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}


def save_text_tower(model_type: str, folder: Path) -> Path:
    """A tiny random text tower (XLM-R, or NLLB's M2M100) and the Unigram tokenizer, saved in `folder` (open_clip
    loads the tower's weights from it: without a CLIP checkpoint it starts the text tower from its own weights)."""
    tokenizer = tiny_models.unigram_tokenizer()
    if model_type == "xlm-roberta":
        config = transformers.XLMRobertaConfig(vocab_size=len(tokenizer), max_position_embeddings=40, pad_token_id=1,
                                               **TEXT_TOWER)
    else:
        config = transformers.M2M100Config(vocab_size=len(tokenizer), d_model=32, encoder_layers=1, decoder_layers=1,
                                           encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                                           decoder_ffn_dim=64, max_position_embeddings=40, pad_token_id=1)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        transformers.AutoModel.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_config(name: str, folder: Path) -> dict:
    """The model's own open_clip config with a tiny vision tower and its text tower read from `folder`."""
    config = copy.deepcopy(open_clip.get_model_config(name))
    config["embed_dim"] = 16
    config["vision_cfg"] = {"image_size": 32, "layers": 1, "width": 64, "patch_size": 8}
    config["text_cfg"].update(hf_model_name=str(folder), hf_tokenizer_name=str(folder), context_length=24)
    return config


@pytest.fixture(scope="module")
def towers(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("towers")
    return {kind: save_text_tower(kind, root / kind) for kind in ("xlm-roberta", "m2m_100")}


@pytest.mark.parametrize("name", MODELS)
def test_tiny_multilingual_model_embeds_chinese_and_english(towers, name):
    tower = towers["xlm-roberta" if name.startswith("xlm") else "m2m_100"]
    config = tiny_config(name, tower)
    assert config["text_cfg"]["hf_pooler_type"] == open_clip.get_model_config(name)["text_cfg"]["hf_pooler_type"]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        clip = load_clip(f"tiny-{name}", architecture=config)
    texts = ["a red circle", "一个红色的圆形", "蓝色的正方形"]
    embeddings = clip.encode_text(texts)
    assert embeddings.shape == (3, 16) and torch.isfinite(embeddings).all()
    assert not torch.allclose(embeddings[1], embeddings[2]), "Chinese texts must not collapse to one token"
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1), requires_grad=True)
    clip.encode_image(images).sum().backward()
    assert images.grad.abs().sum() > 0
    probabilities = zero_shot_classify(clip, images.detach(), ["红色", "蓝色"], templates=("{}",))
    if name.endswith("siglip"):  # sigmoid per label, with the model's own bias
        assert clip.logit_bias is not None and float(clip.logit_bias) == pytest.approx(-10.0)
    else:
        torch.testing.assert_close(probabilities.sum(-1), torch.ones(2))


@pytest.mark.parametrize("name", MODELS)
def test_multilingual_names_pick_their_row(name):
    assert clip_source(name).kind == "open_clip with a Hugging Face text tower"
    assert clip_source("ViT-B-32").kind == "open_clip"


@pytest.mark.parametrize("name, pretrained", [("xlm-roberta-base-ViT-B-32", None), ("nllb-clip-base", None),
                                              ("xlm-roberta-base-ViT-B-32", "laion5b_s13b_b90k")])
def test_offline_multilingual_models_fail_fast_in_one_line(empty_cache, monkeypatch, name, pretrained):
    monkeypatch.setenv("CLIP_GUIDANCE_OFFLINE", "1")
    with pytest.raises(ModelUnavailableError) as caught:
        load_clip(name, pretrained)
    message = str(caught.value)
    assert "\n" not in message and "offline and not in the cache" in message


def test_without_a_pretrained_tag_the_text_tower_weights_are_never_loaded(towers, monkeypatch):
    """Random weights (or a checkpoint loaded over them) build the Hugging Face text tower from its config alone:
    open_clip's default would fetch the tower's hub weights first."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"text tower weights loaded from {args[0] if args else kwargs}")
    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", refuse)
    config = tiny_config("xlm-roberta-base-ViT-B-32", towers["xlm-roberta"])
    clip = load_clip("tiny-xlm-roberta-no-text-weights", architecture=config)
    assert clip.encode_text(["一个红色的圆形"]).shape == (1, 16)
