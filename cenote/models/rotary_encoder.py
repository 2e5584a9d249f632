"""The layer shared by the rotary BERT-style encoders (NomicBert, GTE "new") on packed
tokens: one fused query/key/value projection, rotary positions on the queries and keys
(all of each head or its first ``rotary_dim`` channels), attention both ways, and a
feed-forward that is gated (``first * act(second)``, as both families split it) or plain.

Post-norm (``norm(x + sublayer(x))``, both families' published checkpoints) or NomicBert's
pre-norm, whose residual stream is carried beside the hidden states (see
``forward_prenorm``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from cenote.models.batch import PackedBatch
from cenote.models.decoder import apply_rotary
from cenote.models.layers import packed_attention, packed_qkv_attention
from cenote.models.linear import Linear


def rotary_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype,
                   scaling: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin ``[R, 1, rotary_dim]`` (half-split layout) of each row's position, computed
    in fp32 (times YaRN's ``scaling``); ``inv_freq`` is ``[rotary_dim // 2]`` or one such
    row per token."""
    freqs = positions.float().unsqueeze(-1) * inv_freq.to(positions.device)
    emb = torch.cat((freqs, freqs), dim=-1).unsqueeze(1)
    return (emb.cos() * scaling).to(dtype), (emb.sin() * scaling).to(dtype)


def token_sequence_lengths(batch: PackedBatch) -> torch.Tensor:
    """``[R]`` the length of each row's sequence (filler rows: the first sequence's)."""
    lens = torch.tensor(batch.seq_lens, device=batch.input_ids.device)
    per_token = torch.repeat_interleave(lens, lens)
    filler = batch.num_rows - batch.num_tokens
    return torch.cat([per_token, per_token.new_full((filler,), batch.seq_lens[0])])


def encoder_embeddings(batch: PackedBatch, words: nn.Embedding, types: nn.Embedding | None,
                       positions: nn.Embedding | None, norm: nn.Module) -> torch.Tensor:
    """``norm(words + types + positions)`` of each row, as both families embed: a model
    with one token type reads every token (a pair's second text too) as type 0; learned
    ``positions`` only where the model has no rotary ones."""
    x = words(batch.input_ids)
    if types is not None:
        x = x + (types(batch.token_type_ids)
                 if batch.token_type_ids is not None and types.num_embeddings > 1
                 else types.weight[0])
    if positions is not None:
        x = x + positions(batch.positions)
    return norm(x)


class RotaryEncoderLayer(nn.Module):
    """``gate_act`` (a function of the second half of ``mlp_in``) makes the feed-forward
    gated; otherwise ``act`` (a ``Linear`` activation name) follows ``mlp_in``."""

    def __init__(self, hidden: int, heads: int, inner: int, norm: Callable[[], nn.Module], *,
                 qkv_bias: bool, out_bias: bool, fc1_bias: bool, fc2_bias: bool,
                 gate_act: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 act: str | None = None, rotary_dim: int = 0) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, hidden // heads
        self.rotary_dim = rotary_dim
        self.qkv = Linear(hidden, 3 * hidden, bias=qkv_bias)
        self.qkv.feeds_attention = True
        self.attn_out = Linear(hidden, hidden, bias=out_bias)
        self.attn_norm = norm()
        self.mlp_norm = norm()
        self.gate_act, self.act = gate_act, act
        self.mlp_in = Linear(hidden, 2 * inner if gate_act else inner, bias=fc1_bias)
        self.mlp_out = Linear(inner, hidden, bias=fc2_bias)

    def attention(self, h: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None,
                  batch: PackedBatch, pooled_only: bool,
                  q_scale: torch.Tensor | None = None) -> torch.Tensor:
        qkv = self.qkv(h)
        heads = self.num_heads
        if cos is None and q_scale is None:  # learned positions: nothing to rotate
            return packed_qkv_attention(qkv, batch, heads, heads, causal=False,
                                        pooled_only=pooled_only)
        view = qkv.view(-1, 3 * heads, self.head_dim)
        qk = view[:, :2 * heads]
        if cos is not None:
            if qkv.dtype != cos.dtype:  # int8 layers hand attention a dtype of their own
                cos, sin = cos.to(qkv.dtype), sin.to(qkv.dtype)
            if self.rotary_dim == self.head_dim:
                qk = apply_rotary(qk, cos, sin)
            else:  # only the first rotary_dim channels of each head turn
                turned = apply_rotary(qk[..., :self.rotary_dim].contiguous(), cos, sin)
                qk = torch.cat([turned, qk[..., self.rotary_dim:]], dim=-1)
        q, k, v = qk[:, :heads], qk[:, heads:], view[:, 2 * heads:]
        if q_scale is not None:
            q = q * q_scale.to(q.dtype).view(-1, 1, 1)
        return packed_attention(q, k, v, batch, causal=False, pooled_only=pooled_only)

    def mlp(self, h: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
        if self.gate_act is None:
            if residual is None:
                return self.mlp_out(self.mlp_in(h, self.act))
            return self.mlp_in.feed_forward(h, self.act, self.mlp_out, residual)
        first, gate = self.mlp_in(h).chunk(2, dim=-1)
        gated = first * self.gate_act(gate)
        return self.mlp_out(gated) if residual is None else self.mlp_out.add(gated, residual)

    def forward(self, x: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None,
                batch: PackedBatch, pooled_only: bool = False,
                q_scale: torch.Tensor | None = None) -> torch.Tensor:
        """Post-norm. ``pooled_only``: as ``BertLayer``'s."""
        attn = self.attention(x, cos, sin, batch, pooled_only, q_scale)
        if pooled_only:
            x = x[batch.pooled_rows]
        x = self.attn_norm(self.attn_out.add(attn, x))
        return self.mlp_norm(self.mlp(x, x))

    def forward_prenorm(self, h: torch.Tensor, residual: torch.Tensor | None,
                        cos: torch.Tensor | None, sin: torch.Tensor | None,
                        batch: PackedBatch, pooled_only: bool = False
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """NomicBert's pre-norm block: the stream ``residual`` gains the previous block's
        output ``h`` and this block's attention; returns the feed-forward's output (not
        yet added) and the stream, as the authors' ``NomicBertBlock`` does."""
        residual = h if residual is None else h + residual
        attn = self.attention(self.attn_norm(residual), cos, sin, batch, pooled_only)
        if pooled_only:
            residual = residual[batch.pooled_rows]
        residual = self.attn_out.add(attn, residual)
        return self.mlp(self.mlp_norm(residual), None), residual
