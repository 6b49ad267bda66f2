"""Tiny random transformers CLIP models (CLIPModel, ChineseCLIPModel, AltCLIPModel, SiglipModel) with small
tokenizer vocabularies written here, saved with save_pretrained: built offline in well under a second each."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from transformers.convert_slow_tokenizer import bytes_to_unicode

IMAGE_SIZE = 32
WORDS = ["a", "the", "photo", "of", "red", "blue", "green", "circle", "square", "star", "dog", "cat", "on", "white"]
CHINESE = list("一个张的照片红色蓝绿圆形正方五角星狗猫")
TOWER = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
VISION = {**TOWER, "image_size": IMAGE_SIZE, "patch_size": 8}


def clip_tokenizer() -> transformers.PreTrainedTokenizerBase:
    """A byte-level BPE tokenizer with every byte (alone and word-final) and merges for a few words' first pairs."""
    alphabet = list(bytes_to_unicode().values())
    vocab = {token: index for index, token in enumerate(alphabet + [f"{c}</w>" for c in alphabet])}
    merges = []
    for word in WORDS:
        if len(word) > 1:
            merged = word[0] + word[1] + ("</w>" if len(word) == 2 else "")
            if merged not in vocab:
                merges.append((word[0], word[1] + ("</w>" if len(word) == 2 else "")))
                vocab[merged] = len(vocab)
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return transformers.CLIPTokenizer(vocab=vocab, merges=merges)


def bert_tokenizer() -> transformers.PreTrainedTokenizerBase:
    """A WordPiece tokenizer (Chinese-CLIP's BertTokenizer) over a few English words and Chinese characters."""
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *CHINESE, *"abcdefghijklmnopqrstuvwxyz"]
    return transformers.BertTokenizer(vocab={token: index for index, token in enumerate(tokens)})


def unigram_tokenizer() -> transformers.PreTrainedTokenizerBase:
    """A Unigram tokenizer (XLM-RoBERTa's, as AltCLIP uses) with a hand-written vocabulary: no sentencepiece."""
    pieces = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [(f"▁{word}", -2.0) for word in WORDS] + [("▁", -3.0)]
    pieces += [(char, -5.0) for char in CHINESE + list("abcdefghijklmnopqrstuvwxyz")]
    return transformers.XLMRobertaTokenizer(vocab=pieces)


def build_clip() -> tuple[torch.nn.Module, transformers.PreTrainedTokenizerBase, object]:
    """A tiny CLIPModel with its BPE tokenizer and a CLIP image processor (resize + centre crop)."""
    tokenizer = clip_tokenizer()
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = transformers.CLIPConfig(
        text_config={**TOWER, "vocab_size": len(tokenizer), "max_position_embeddings": 32, "eos_token_id": eos,
                     "bos_token_id": eos - 1, "pad_token_id": eos},
        vision_config=VISION, projection_dim=16)
    processor = transformers.CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                                                crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return transformers.CLIPModel(config), tokenizer, processor


def build_chinese_clip() -> tuple[torch.nn.Module, transformers.PreTrainedTokenizerBase, object]:
    """A tiny ChineseCLIPModel with a WordPiece tokenizer."""
    tokenizer = bert_tokenizer()
    config = transformers.ChineseCLIPConfig(
        text_config={**TOWER, "vocab_size": len(tokenizer), "max_position_embeddings": 40},
        vision_config=VISION, projection_dim=16)
    processor = transformers.ChineseCLIPImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                                                       crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return transformers.ChineseCLIPModel(config), tokenizer, processor


def build_altclip() -> tuple[torch.nn.Module, transformers.PreTrainedTokenizerBase, object]:
    """A tiny AltCLIPModel (XLM-R text tower) with a Unigram tokenizer."""
    tokenizer = unigram_tokenizer()
    config = transformers.AltCLIPConfig(
        text_config={**TOWER, "vocab_size": len(tokenizer), "max_position_embeddings": 42, "project_dim": 16,
                     "pad_token_id": 1},
        vision_config=VISION, projection_dim=16)
    processor = transformers.CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                                                crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return transformers.AltCLIPModel(config), tokenizer, processor


def build_siglip() -> tuple[torch.nn.Module, transformers.PreTrainedTokenizerBase, object]:
    """A tiny SiglipModel; its tokenizer is the Unigram one (SigLIP's own needs sentencepiece)."""
    tokenizer = unigram_tokenizer()
    config = transformers.SiglipConfig(
        text_config={**TOWER, "vocab_size": len(tokenizer), "max_position_embeddings": 12, "pad_token_id": 1},
        vision_config=VISION)
    processor = transformers.SiglipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return transformers.SiglipModel(config), tokenizer, processor


BUILDERS = {"clip": build_clip, "chinese_clip": build_chinese_clip, "altclip": build_altclip, "siglip": build_siglip}


def save_tiny_model(kind: str, folder: Path, seed: int = 0) -> Path:
    """Build the tiny model of `kind` with seeded random weights and save model, tokenizer and processor in `folder`."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model, tokenizer, processor = BUILDERS[kind]()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
