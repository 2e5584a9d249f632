"""Alibaba's GTE "new" encoders (``NewModel``, ``NewForSequenceClassification``:
gte-multilingual-base, gte-base-en-v1.5, gte-multilingual-reranker-base) on packed
tokens, by architecture name: the checkpoint's own modelling code is never run.

Word (and token-type) embeddings and their LayerNorm, then post-norm layers with one
fused ``qkv_proj`` (or q/k/v apart, ``pack_qkv: false``), RoPE on every head (GTE's
fixed "ntk" scaling, mixed or not, where the config has ``rope_scaling``; learned
positions for ``position_embedding_type: absolute``), a GLU feed-forward
(``up * act(gate)`` from one ``up_gate_proj``), LayerNorm or RMSNorm as
``layer_norm_type`` says, and GTE's optional log-n attention scale. The classifier is
BERT's: ``pooler`` (dense + tanh) on the first token, then ``classifier``. What the
authors' code does is read from their ``modeling.py`` (Alibaba-NLP/new-impl);
``tests/reference_rotary_encoders.py`` restates it for the parity tests.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from cenote.models.batch import PackedBatch
from cenote.models.bert import BertClassifierHead
from cenote.models.decoder import RMSNorm
from cenote.models.interface import AttentionShape, PoolingModel
from cenote.models.layers import LayerNorm
from cenote.models.linear import ACTIVATION_FUNCTIONS, hidden_activation
from cenote.models.loading import ParameterLoader
from cenote.models.rotary_encoder import (
    RotaryEncoderLayer,
    encoder_embeddings,
    rotary_cos_sin,
    token_sequence_lengths,
)


def gte_inv_freq(config: Any, head_dim: int) -> torch.Tensor:
    """GTE's rotary inverse frequencies: its ``NTKScalingRotaryEmbedding`` scales them for
    every length once ``factor`` > 1 (the cache it builds at load already runs past
    ``max_position_embeddings``); ``mixed_b`` selects the mixed variant."""
    base = config.gte_rope_theta
    scaling = config.gte_rope_scaling or {}
    kind = scaling.get("type") or scaling.get("rope_type")
    if scaling and kind != "ntk":
        raise ValueError(f"Unknown GTE RoPE scaling type {kind!r} (GTE's code knows 'ntk').")
    factor = float(scaling.get("factor", 1.0))
    mixed_b = scaling.get("mixed_b")
    exponents = torch.arange(0, head_dim, 2).float() / head_dim
    if factor <= 1:
        return 1.0 / (base ** exponents)
    inv_freq = 1.0 / ((base * (factor if mixed_b is None else 1)) ** exponents)
    if mixed_b is None:
        return inv_freq / factor ** (2 / head_dim)
    a = torch.tensor(factor).log() / (head_dim / 2) ** mixed_b
    return inv_freq / (a * torch.arange(1, head_dim // 2 + 1).float() ** mixed_b).exp()


class GteNewModel(PoolingModel):
    """A GTE "new" encoder; ``classifier`` is set for sequence classifiers. With
    ``batch.pooled`` set, the last layer runs for the pooled rows only and the output
    has the rows of ``batch.pooled_rows``."""

    computes_pooled_rows_only = True
    lora_modules = (
        (r"layer\.(\d+)\.attention\.qkv_proj", r"layers.\1.qkv", None),
        (r"layer\.(\d+)\.attention\.(?P<part>q_proj|k_proj|v_proj)", r"layers.\1.qkv",
         ("q_proj", "k_proj", "v_proj")),
        (r"layer\.(\d+)\.attention\.o_proj", r"layers.\1.attn_out", None),
        (r"layer\.(\d+)\.mlp\.up_gate_proj", r"layers.\1.mlp_in", None),
        (r"layer\.(\d+)\.mlp\.down_proj", r"layers.\1.mlp_out", None),
    )

    def __init__(self, config: Any, task: str) -> None:
        super().__init__()
        self.config = config
        hidden, heads = config.hidden_size, config.num_attention_heads
        head_dim = hidden // heads
        if config.position_embedding_type not in ("rope", "absolute"):
            raise ValueError(f"Unknown GTE position_embedding_type "
                             f"{config.position_embedding_type!r}.")
        if config.layer_norm_type not in ("layer_norm", "rms_norm"):
            raise ValueError(f"Unknown GTE layer_norm_type {config.layer_norm_type!r}.")
        self.word_embeddings = nn.Embedding(config.vocab_size, hidden)
        self.token_type_embeddings = (nn.Embedding(config.type_vocab_size, hidden)
                                      if config.type_vocab_size > 0 else None)
        rope = config.position_embedding_type == "rope"
        self.position_embeddings = (None if rope
                                    else nn.Embedding(config.max_position_embeddings, hidden))
        self.inv_freq = gte_inv_freq(config, head_dim) if rope else None
        # The embeddings' norm is a LayerNorm whatever layer_norm_type says (GTE's code).
        self.embedding_norm = LayerNorm(hidden, eps=config.layer_norm_eps)
        norm = (functools.partial(LayerNorm, hidden, eps=config.layer_norm_eps)
                if config.layer_norm_type == "layer_norm"
                else functools.partial(RMSNorm, hidden, config.layer_norm_eps))
        gate = ACTIVATION_FUNCTIONS[hidden_activation(config)]
        self.layers = nn.ModuleList(RotaryEncoderLayer(
            hidden, heads, config.intermediate_size, norm, qkv_bias=True, out_bias=True,
            fc1_bias=False, fc2_bias=True, gate_act=gate, rotary_dim=head_dim if rope else 0)
            for _ in range(config.num_hidden_layers))
        self.attention_shape = AttentionShape(heads, heads, head_dim, False)
        if task == "classify":
            self.classifier = BertClassifierHead(config)

    def _q_scale(self, batch: PackedBatch) -> torch.Tensor | None:
        """GTE's log-n attention scale, log(length) / log(max_position_embeddings)."""
        if not self.config.logn_attention_scale:
            return None
        lens = token_sequence_lengths(batch).float()
        scale = lens.log() / math.log(self.config.max_position_embeddings)
        return scale.clamp(min=1) if self.config.logn_attention_clip1 else scale

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        x = encoder_embeddings(batch, self.word_embeddings, self.token_type_embeddings,
                               self.position_embeddings, self.embedding_norm)
        cos = sin = None
        if self.inv_freq is not None:
            cos, sin = rotary_cos_sin(batch.positions, self.inv_freq, x.dtype)
        q_scale = self._q_scale(batch)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            pooled_only = i == last and batch.pooled is not None
            x = layer(x, cos, sin, batch, pooled_only, q_scale)  # q: every row
        return x

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy checkpoint tensors in (q/k/v fused where saved apart); every parameter
        must be set."""
        loader = ParameterLoader(self, "new")
        for raw_name, tensor in weights:
            name = raw_name.removeprefix("new.")
            if re.match(r"(pooler|classifier)\.", name):
                if self.classifier is None:
                    continue
                name = "classifier." + name.replace("pooler.dense.", "pooler.")
                loader.assign(name, tensor)
                continue
            if re.match(r"lm_head\.|embeddings\.position_ids$", name):
                continue
            match = re.fullmatch(r"encoder\.layer\.(\d+)\.attention\.(q|k|v)_proj\.(weight|bias)",
                                 name)
            if match:
                layer, part, kind = match.groups()
                loader.add_part(f"layers.{layer}.qkv.{kind}", part, ("q", "k", "v"), tensor)
                continue
            loader.assign_renamed(name, tensor, _RENAMES)
        loader.finish_all()


# Checkpoint name (after the "new." prefix is cut) -> ours.
_RENAMES = [
    (r"^embeddings\.LayerNorm\.", "embedding_norm."),
    (r"^embeddings\.", ""),
    (r"^encoder\.layer\.(\d+)\.attention\.qkv_proj\.", r"layers.\1.qkv."),
    (r"^encoder\.layer\.(\d+)\.attention\.o_proj\.", r"layers.\1.attn_out."),
    (r"^encoder\.layer\.(\d+)\.mlp\.up_gate_proj\.", r"layers.\1.mlp_in."),
    (r"^encoder\.layer\.(\d+)\.mlp\.down_proj\.", r"layers.\1.mlp_out."),
    (r"^encoder\.layer\.(\d+)\.attn_ln\.", r"layers.\1.attn_norm."),
    (r"^encoder\.layer\.(\d+)\.mlp_ln\.", r"layers.\1.mlp_norm."),
]
