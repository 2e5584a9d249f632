"""ModernBERT encoders (``ModernBertModel``, ``ModernBertForSequenceClassification``) on
packed tokens.

Pre-norm layers (the first without its attention norm) with rotary positions, no
biases by default, a GeGLU feed-forward and a final norm. Every
``global_attn_every_n_layers``-th layer attends globally; the others within a
sliding window of ``local_attention // 2`` tokens on either side, each kind with its
own RoPE base. Query/key/value come from one fused projection, as in the checkpoint.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from cenote.config.token_classification import is_token_classifier
from cenote.models.batch import PackedBatch
from cenote.models.decoder import RotaryEmbedding, apply_rotary
from cenote.models.interface import AttentionShape, PoolingModel
from cenote.models.layers import LayerNorm, packed_attention
from cenote.models.linear import ACTIVATION_FUNCTIONS, HIDDEN_ACTIVATIONS, Linear
from cenote.models.loading import ParameterLoader, missing_tensors_error


def _activation(name: str):
    if name not in HIDDEN_ACTIVATIONS:
        raise ValueError(f"Unsupported ModernBERT activation {name!r}.")
    return ACTIVATION_FUNCTIONS[HIDDEN_ACTIVATIONS[name]]


class ModernBertLayer(nn.Module):
    def __init__(self, config: Any, index: int, sliding: bool) -> None:
        super().__init__()
        hidden, eps = config.hidden_size, config.norm_eps
        self.num_heads = config.num_attention_heads
        self.head_dim = hidden // self.num_heads
        # Layer 0's input is the embeddings' norm already.
        self.attn_norm = LayerNorm(hidden, eps=eps) if index else None
        self.qkv = Linear(hidden, 3 * hidden, bias=config.attention_bias)
        self.qkv.feeds_attention = True
        self.attn_out = Linear(hidden, hidden, bias=config.attention_bias)
        self.mlp_norm = LayerNorm(hidden, eps=eps)
        self.mlp_in = Linear(hidden, 2 * config.intermediate_size, bias=config.mlp_bias)
        self.mlp_out = Linear(config.intermediate_size, hidden, bias=config.mlp_bias)
        self.act = _activation(config.hidden_activation)
        # Keys at most local_attention // 2 away on either side: less than that + 1.
        self.window = config.local_attention // 2 + 1 if sliding else None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                batch: PackedBatch, pooled_only: bool = False) -> torch.Tensor:
        """``pooled_only``: as ``BertLayer``'s."""
        h = x if self.attn_norm is None else self.attn_norm(x)
        qkv = self.qkv(h)
        if qkv.dtype != cos.dtype:  # int8 layers hand attention a dtype of their own
            cos, sin = cos.to(qkv.dtype), sin.to(qkv.dtype)
        heads = self.num_heads
        heads_view = qkv.view(-1, 3 * heads, self.head_dim)
        # Queries and keys rotated in one pass (half the time of one pass each).
        qk = apply_rotary(heads_view[:, :2 * heads], cos, sin)
        q, k, v = qk[:, :heads], qk[:, heads:], heads_view[:, 2 * heads:]
        attn = packed_attention(q, k, v, batch, causal=False, sliding_window=self.window,
                                pooled_only=pooled_only)
        if pooled_only:
            x = x[batch.pooled_rows]
        x = self.attn_out.add(attn, x)
        first, gate = self.mlp_in(self.mlp_norm(x)).chunk(2, dim=-1)
        return self.mlp_out.add(self.act(first) * gate, x)


class ModernBertClassifierHead(nn.Module):
    """``head`` (dense, activation, norm) then ``classifier``, on the pooled row."""

    def __init__(self, config: Any, outputs: int | None = None, out_bias: bool = True) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.dense = nn.Linear(hidden, hidden, bias=config.classifier_bias)
        self.act = _activation(config.classifier_activation)
        self.norm = nn.LayerNorm(hidden, eps=config.norm_eps, bias=config.norm_bias)
        self.out = nn.Linear(hidden, outputs or config.num_labels, bias=out_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.norm(self.act(self.dense(x))))


# Checkpoint name (after the "model." prefix is cut) -> ours.
_RENAMES = [
    (r"^embeddings\.tok_embeddings\.", "embeddings."),
    (r"^embeddings\.norm\.", "embedding_norm."),
    (r"^layers\.(\d+)\.attn\.Wqkv\.", r"layers.\1.qkv."),
    (r"^layers\.(\d+)\.attn\.Wo\.", r"layers.\1.attn_out."),
    (r"^layers\.(\d+)\.mlp\.Wi\.", r"layers.\1.mlp_in."),
    (r"^layers\.(\d+)\.mlp\.Wo\.", r"layers.\1.mlp_out."),
    (r"^head\.", "classifier."),
    (r"^classifier\.", "classifier.out."),
]
_CLASSIFIER = re.compile(r"^(head|classifier)\.")
_IGNORED = re.compile(r"^decoder\.")  # ModernBertForMaskedLM's vocabulary projection
_MASKED_LM_HEAD = re.compile(r"^(head|decoder)\.")  # its head, when SPLADE reads it


class ModernBertModel(PoolingModel):
    """A ModernBERT encoder; ``classifier`` is set for sequence classifiers.

    With ``batch.pooled`` set, the last layer runs for the pooled rows only and the
    output has the rows of ``batch.pooled_rows``.
    """

    computes_pooled_rows_only = True
    builds_vocab_head = True
    lora_modules = (
        (r"layers\.(\d+)\.attn\.Wqkv", r"layers.\1.qkv", None),
        (r"layers\.(\d+)\.attn\.Wo", r"layers.\1.attn_out", None),
        (r"layers\.(\d+)\.mlp\.Wi", r"layers.\1.mlp_in", None),
        (r"layers\.(\d+)\.mlp\.Wo", r"layers.\1.mlp_out", None),
    )

    def __init__(self, config: Any, task: str) -> None:
        super().__init__()
        self.config = config
        hidden, heads = config.hidden_size, config.num_attention_heads
        head_dim = hidden // heads
        kinds = getattr(config, "layer_types", None) or [
            "sliding_attention" if i % config.global_attn_every_n_layers else "full_attention"
            for i in range(config.num_hidden_layers)]
        self.layer_kinds = kinds
        self.embeddings = nn.Embedding(config.vocab_size, hidden)
        self.embedding_norm = LayerNorm(hidden, eps=config.norm_eps)
        self.layers = nn.ModuleList(ModernBertLayer(config, i, kind == "sliding_attention")
                                    for i, kind in enumerate(kinds))
        self.final_norm = LayerNorm(hidden, eps=config.norm_eps)
        # Global and local layers each their RoPE base (the config's rope_parameters by
        # layer type, as Gemma3's; scaled variants as transformers computes them).
        self.rotary = nn.ModuleDict({kind: RotaryEmbedding(config, head_dim, kind)
                                     for kind in sorted(set(kinds))})
        self.attention_shape = AttentionShape(heads, heads, head_dim, False)
        if task == "classify":
            self.classifier = ModernBertClassifierHead(config)
        elif task == "reward" and is_token_classifier(
                (getattr(config, "architectures", None) or [""])[0]):
            self.token_head = ModernBertClassifierHead(config)  # on every token

    def use_vocab_head(self) -> None:
        """Load ModernBertForMaskedLM's head too (``head``: dense, activation, norm; then
        ``decoder``, tied to the embeddings where the checkpoint leaves it out): SPLADE
        reads its logits."""
        self.vocab_head = ModernBertClassifierHead(self.config, self.config.vocab_size,
                                                   self.config.decoder_bias)

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        x = self.embedding_norm(self.embeddings(batch.input_ids))
        rotary = {kind: rope(batch.positions, x.dtype) for kind, rope in self.rotary.items()}
        last = len(self.layers) - 1
        for i, (layer, kind) in enumerate(zip(self.layers, self.layer_kinds, strict=True)):
            x = layer(x, *rotary[kind], batch, pooled_only=i == last and batch.pooled is not None)
        return self.final_norm(x)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy checkpoint tensors in; every parameter must be set (the norms' biases
        stay zero where the checkpoint has none, ``norm_bias: false``)."""
        loader = ParameterLoader(self, "modernbert")
        # A sequence classifier's head, or a token classifier's (the same layers per token).
        head = "classifier" if self.classifier is not None else "token_head"
        for raw_name, tensor in weights:
            name = raw_name.removeprefix("model.")
            if self.vocab_head is not None and _MASKED_LM_HEAD.match(name):
                part = (name.removeprefix("head.") if name.startswith("head.")
                        else "out." + name.removeprefix("decoder."))
                loader.assign("vocab_head." + part, tensor)
                continue
            if _IGNORED.search(name) or (self.classifier is None and self.token_head is None
                                         and _CLASSIFIER.search(name)):
                continue
            for pattern, replacement in _RENAMES:
                if re.search(pattern, name):
                    name = re.sub(pattern, replacement, name)
                    break
            loader.assign(re.sub(r"^classifier\.", head + ".", name), tensor)
        missing = loader.finish()
        if "vocab_head.out.weight" in missing:  # tied to the embeddings
            with torch.no_grad():
                self.vocab_head.out.weight.copy_(self.embeddings.weight)
            missing.remove("vocab_head.out.weight")
        if not self.config.norm_bias:  # zero biases: the native LayerNorm's exact equal
            missing = [name for name in missing if not (
                name.endswith("norm.bias") and not name.startswith(head + "."))]
        if missing:
            raise missing_tensors_error(missing)
