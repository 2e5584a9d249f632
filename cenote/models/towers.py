"""The towers of a dual encoder (CLIP, SigLIP) on packed rows: pre-norm transformer
layers, a text tower over packed tokens and a vision transformer over image patches.

An image is a sequence of its patches (and CLIP's class token), all images of one
size: a batch of N images is N sequences of one length, with no padding, so the
matmuls see ``[N * tokens, hidden]`` and attention runs as for texts.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cenote.models.batch import PackedBatch
from cenote.models.layers import LayerNorm, packed_qkv_attention, pooled_query_attention
from cenote.models.linear import (
    ACTIVATION_FUNCTIONS,
    QUICK_GELU_SLOPE,
    Linear,
    hidden_activation,
    split_rows,
)


class PreNormLayer(nn.Module):
    """A transformer layer that normalises before attention and before the MLP, as
    CLIP's and SigLIP's towers do; query/key/value fused into one projection."""

    def __init__(self, config: Any, causal: bool) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.causal = causal
        eps = config.layer_norm_eps
        self.norm1 = LayerNorm(hidden, eps=eps)
        self.qkv = Linear(hidden, 3 * hidden)
        self.qkv.feeds_attention = True
        self.attn_out = Linear(hidden, hidden)
        self.norm2 = LayerNorm(hidden, eps=eps)
        self.fc1 = Linear(hidden, config.intermediate_size)
        self.fc2 = Linear(config.intermediate_size, hidden)
        self.act = hidden_activation(config)
        self.q_only: Linear | None = None  # see split_qkv
        self.kv_only: Linear | None = None

    def fold_quick_gelu(self) -> None:
        """Run CLIP's quick GELU as the swish oneDNN fuses into ``fc1``:
        ``x * sigmoid(1.702 x) = swish(1.702 x) / 1.702``, so ``fc1`` takes the factor
        and ``fc2`` its inverse (one rounding of each weight). After loading, before
        packing."""
        if self.act != "quick_gelu":
            return
        with torch.no_grad():
            self.fc1.weight.mul_(QUICK_GELU_SLOPE)
            self.fc1.bias.mul_(QUICK_GELU_SLOPE)
            self.fc2.weight.div_(QUICK_GELU_SLOPE)
        self.act = "silu"

    def split_qkv(self) -> None:
        """Keep the query rows of ``qkv`` apart too, for a pooled-only last layer."""
        self.q_only, self.kv_only = split_rows(self.qkv, self.attn_out.in_features)

    def forward(self, x: torch.Tensor, batch: PackedBatch,
                pooled_only: bool = False) -> torch.Tensor:
        """``pooled_only``: only the rows of ``batch.pooled_rows`` are computed past
        attention (and returned); every row still serves as key and value."""
        h = self.norm1(x)
        attn = None
        if pooled_only and self.q_only is not None:
            attn = pooled_query_attention(self.q_only, self.kv_only, h, batch, self.num_heads,
                                          self.num_heads, causal=self.causal)
        if attn is None:
            attn = packed_qkv_attention(self.qkv(h), batch, self.num_heads, self.num_heads,
                                        causal=self.causal, pooled_only=pooled_only)
        if pooled_only:
            x = x[batch.pooled_rows]
        x = self.attn_out.add(attn, x)
        return self.fc1.feed_forward(self.norm2(x), self.act, self.fc2, x)


class TextTower(nn.Module):
    """Token and position embeddings, pre-norm layers and a final norm, which runs on
    the rows the model pools only (CLIP's EOS token, SigLIP's last): it is row-wise."""

    def __init__(self, config: Any, causal: bool) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.token_embedding = nn.Embedding(config.vocab_size, hidden)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, hidden)
        self.layers = nn.ModuleList(PreNormLayer(config, causal)
                                    for _ in range(config.num_hidden_layers))
        self.final_norm = LayerNorm(hidden, eps=config.layer_norm_eps)

    def forward(self, batch: PackedBatch, rows: torch.Tensor) -> torch.Tensor:
        """The final-normed hidden states of ``rows``, one per text."""
        x = self.token_embedding(batch.input_ids) + self.position_embedding(batch.positions)
        for layer in self.layers:
            x = layer(x, batch)
        return self.final_norm(x[rows])


class AttentionPoolingHead(nn.Module):
    """SigLIP's pooling head: a learned probe attends over an image's tokens, then a
    norm and an MLP with a residual (``nn.MultiheadAttention``'s weight names)."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.probe = nn.Parameter(torch.zeros(1, 1, hidden))
        self.in_proj_weight = nn.Parameter(torch.zeros(3 * hidden, hidden))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * hidden))
        self.out_proj = nn.Linear(hidden, hidden)
        self.norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.fc1 = nn.Linear(hidden, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, hidden)
        self.act = ACTIVATION_FUNCTIONS[hidden_activation(config)]

    def forward(self, x: torch.Tensor, num_images: int) -> torch.Tensor:
        """``x``: ``[num_images * tokens, hidden]`` -> ``[num_images, hidden]``."""
        hidden = x.shape[-1]
        head_dim = hidden // self.num_heads
        q = F.linear(self.probe.reshape(1, hidden), self.in_proj_weight[:hidden],
                     self.in_proj_bias[:hidden])
        kv = F.linear(x, self.in_proj_weight[hidden:], self.in_proj_bias[hidden:])
        k, v = kv.view(num_images, -1, 2, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)
        q = q.view(1, self.num_heads, 1, head_dim).expand(num_images, -1, -1, -1)
        attn = F.scaled_dot_product_attention(q, k, v).reshape(num_images, hidden)
        pooled = self.out_proj(attn)
        return pooled + self.fc2(self.act(self.fc1(self.norm(pooled))))


class VisionTower(nn.Module):
    """A vision transformer: patches embedded by one matmul (the checkpoint's patch
    convolution, whose stride is its kernel), position embeddings, pre-norm layers.

    ``pooling``: "class" (CLIP: a class token first, a norm before the layers, the class
    token's row normed after; the last layer computes that row only) or "attention"
    (SigLIP: no class token, every row normed, then :class:`AttentionPoolingHead`).
    """

    def __init__(self, config: Any, pooling: str) -> None:
        super().__init__()
        if pooling not in ("class", "attention"):
            raise ValueError(f"pooling must be 'class' or 'attention', not {pooling!r}")
        hidden, eps = config.hidden_size, config.layer_norm_eps
        self.patch_size = config.patch_size
        self.num_patches = (config.image_size // config.patch_size) ** 2
        self.pooling = pooling
        channels = getattr(config, "num_channels", 3)
        self.patch = Linear(channels * self.patch_size ** 2, hidden, bias=pooling == "attention")
        self.class_embedding = nn.Parameter(torch.zeros(hidden)) if pooling == "class" else None
        self.num_tokens = self.num_patches + (pooling == "class")
        self.position_embedding = nn.Embedding(self.num_tokens, hidden)
        self.pre_norm = LayerNorm(hidden, eps=eps) if pooling == "class" else None
        self.layers = nn.ModuleList(PreNormLayer(config, causal=False)
                                    for _ in range(config.num_hidden_layers))
        self.post_norm = LayerNorm(hidden, eps=eps)
        self.head = AttentionPoolingHead(config) if pooling == "attention" else None

    def patches(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[N, C, H, W]`` -> ``[N * patches, C * p * p]``, each patch's values in the
        convolution weight's order (channel, row, column)."""
        n, c, height, width = pixel_values.shape
        p = self.patch_size
        if height % p or width % p or (height // p) * (width // p) != self.num_patches:
            raise ValueError(f"Pixel values of {height}x{width} do not make the "
                             f"{self.num_patches} patches of {p}x{p} this tower takes.")
        grid = pixel_values.reshape(n, c, height // p, p, width // p, p)
        return grid.permute(0, 2, 4, 1, 3, 5).reshape(n * self.num_patches, c * p * p)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[N, C, H, W]`` -> the pooled ``[N, hidden]``."""
        n = pixel_values.shape[0]
        x = self.patch(self.patches(pixel_values)).view(n, self.num_patches, -1)
        if self.class_embedding is not None:
            x = torch.cat([self.class_embedding.expand(n, 1, -1), x], dim=1)
        x = (x + self.position_embedding.weight).reshape(n * self.num_tokens, -1)
        if self.pre_norm is not None:
            x = self.pre_norm(x)
        batch = self.image_batch(n, x.device)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x, batch, pooled_only=i == last and batch.pooled is not None)
        if self.head is None:
            return self.post_norm(x[:n])  # the class tokens' rows
        return self.head(self.post_norm(x), n)

    def image_batch(self, num_images: int, device: torch.device) -> PackedBatch:
        """The layout of ``num_images`` images as packed sequences of one length (token
        ids unused); CLIP pools each image's first row."""
        return PackedBatch.build([[0] * self.num_tokens] * num_images, device=device,
                                 pooled="first" if self.head is None else None)
