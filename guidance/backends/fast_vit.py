"""Faster CPU kernels for open_clip's vision transformer, with the same maths and the same parameters.

Guidance runs the image tower forward and backward on every cutout at every step, so its CPU kernels decide the
step time. Measured on this project's 2-core AMX CPU for ViT-B/32 with 32 cutouts (forward and backward, one layer
or the patch embedding; milliseconds):

| kernel | fp32 | bf16 autocast |
|---|---:|---:|
| patch embedding as a 32x32 stride-32 convolution | 237 | 181 |
| the same as one matmul over unfolded patches | 58 | 31 |
| attention over 50 tokens, `scaled_dot_product_attention` (flash) | 13 | 38 |
| the same with plain matmuls and a softmax | 17 | 7 |

So the patch embedding is always a matmul, and attention takes plain matmuls on the CPU in low precision only.
The module classes are swapped in place (`speed_up_image_tower`), so state dicts, checkpoints and CUDA runs are
unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class UnfoldedPatchEmbedding(nn.Conv2d):
    """A ViT's patch embedding (kernel == stride, no padding, groups or bias) computed as one matmul over the
    unfolded patches on the CPU; on other devices it is the plain convolution."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) images -> (N, width, H // patch, W // patch) patch embeddings, as the convolution gives."""
        if images.device.type != "cpu":
            return super().forward(images)
        n, channels = images.shape[:2]
        size_h, size_w = self.kernel_size
        patches = images.unfold(2, size_h, size_h).unfold(3, size_w, size_w)  # N, C, rows, cols, kh, kw
        rows, cols = patches.shape[2:4]
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(n, rows * cols, channels * size_h * size_w)
        embedded = patches @ self.weight.reshape(self.out_channels, -1).t()
        return embedded.transpose(1, 2).reshape(n, self.out_channels, rows, cols)


class ShortSequenceAttention(nn.MultiheadAttention):
    """nn.MultiheadAttention whose CPU low-precision path (bf16/fp16 autocast or inputs) is plain matmuls and a
    softmax, for unmasked self-attention without dropout or returned weights; every other call is the parent's."""

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_padding_mask=None,
                need_weights: bool = True, attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attention of (L, N, D) inputs (N, L, D when batch_first); see nn.MultiheadAttention."""
        low_precision = torch.is_autocast_enabled("cpu") or query.dtype in (torch.bfloat16, torch.float16)
        plain = (query.device.type == "cpu" and low_precision and query is key is value and not need_weights
                 and key_padding_mask is None and attn_mask is None and not is_causal and self._qkv_same_embed_dim
                 and self.in_proj_bias is not None and not self.add_zero_attn and self.bias_k is None
                 and (self.dropout == 0 or not self.training))
        if not plain:
            return super().forward(query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,
                                   attn_mask=attn_mask, average_attn_weights=average_attn_weights,
                                   is_causal=is_causal)
        tokens = query.transpose(0, 1) if self.batch_first else query  # L, N, D
        length, batch, width = tokens.shape
        heads, head_width = self.num_heads, width // self.num_heads
        qkv = F.linear(tokens, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(length, batch, 3, heads, head_width).permute(2, 1, 3, 0, 4)  # each N, heads, L, d
        scores = (q * head_width ** -0.5) @ k.transpose(-2, -1)
        mixed = scores.softmax(-1).to(v.dtype) @ v  # N, heads, L, d
        out = F.linear(mixed.permute(2, 0, 1, 3).reshape(length, batch, width), self.out_proj.weight,
                       self.out_proj.bias)
        return (out.transpose(0, 1) if self.batch_first else out), None


def speed_up_image_tower(visual: nn.Module) -> None:
    """Swap the kernels above into an open_clip VisionTransformer (anything else is left as it is)."""
    patch = getattr(visual, "conv1", None)
    if (type(patch) is nn.Conv2d and patch.kernel_size == patch.stride and patch.padding == (0, 0)
            and patch.dilation == (1, 1) and patch.groups == 1 and patch.bias is None):
        patch.__class__ = UnfoldedPatchEmbedding
    for block in getattr(getattr(visual, "transformer", None), "resblocks", ()):
        if type(getattr(block, "attn", None)) is nn.MultiheadAttention:
            block.attn.__class__ = ShortSequenceAttention
