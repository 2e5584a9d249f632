"""Gemma3's text model (``Gemma3TextModel``) as a pooling model, on packed tokens.

EmbeddingGemma runs it bidirectionally (``use_bidirectional_attention``): its full
layers see the whole sequence and its sliding layers the keys less than
``sliding_window`` away on either side. Without that switch it runs causally, as
Gemma3 does. What sets it apart from ``decoder.py``'s families: RMSNorms that scale
by ``1 + weight`` and round once, norms after attention and after the feed-forward
besides those before them, the embeddings scaled by ``sqrt(hidden_size)``, a RoPE
per layer type (local and global thetas) and ``query_pre_attn_scalar`` as the
attention's scale. The feed-forward is ``decoder.py``'s gated MLP (GeGLU, tanh GELU).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from cenote.config.hf import architecture_of, is_bidirectional
from cenote.models.batch import PackedBatch
from cenote.models.decoder import DecoderArgs, FeedForward, RotaryEmbedding, apply_rotary
from cenote.models.interface import AttentionShape, PoolingModel
from cenote.models.linear import Linear
from cenote.models.loading import ParameterLoader, missing_tensors_error
from cenote.models.lora import llama_lora_modules
from cenote.models.prefix_sharing import attention


def gemma3_args(config: Any) -> DecoderArgs:
    """The decoder shape of a Gemma3 text config."""
    if getattr(config, "attn_logit_softcapping", None) is not None:
        raise ValueError("Gemma3 attention logit soft-capping is not supported natively.")
    num_layers = config.num_hidden_layers
    kinds = getattr(config, "layer_types", None) or ["full_attention"] * num_layers
    bias = bool(getattr(config, "attention_bias", False))
    return DecoderArgs(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size, num_layers=num_layers,
        num_heads=config.num_attention_heads,
        num_kv_heads=config.num_key_value_heads or config.num_attention_heads,
        head_dim=config.head_dim, rms_norm_eps=config.rms_norm_eps,
        hidden_act=config.hidden_activation, qkv_bias=bias, o_bias=bias, mlp_bias=False,
        qk_norm=True,
        sliding_windows=[config.sliding_window if kind == "sliding_attention" else None
                         for kind in kinds],
        causal=not is_bidirectional(config),
    )


class GemmaRMSNorm(nn.Module):
    """``x / rms(x) * (1 + weight)`` in fp32, rounded once at the end (Gemma's order)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x32 * (1.0 + self.weight.float())).to(x.dtype)


class Gemma3Attention(nn.Module):
    def __init__(self, args: DecoderArgs, sliding_window: int | None,
                 query_pre_attn_scalar: float) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads = args.num_heads, args.num_kv_heads
        self.head_dim = args.head_dim
        self.sizes = [args.num_heads * args.head_dim, 2 * args.num_kv_heads * args.head_dim]
        self.qkv = Linear(args.hidden_size, sum(self.sizes), bias=args.qkv_bias)
        self.o_proj = Linear(args.num_heads * args.head_dim, args.hidden_size,
                             bias=args.o_bias)
        self.q_norm = GemmaRMSNorm(args.head_dim, args.rms_norm_eps)
        self.k_norm = GemmaRMSNorm(args.head_dim, args.rms_norm_eps)
        self.sliding_window, self.causal = sliding_window, args.causal
        # Attention scales by head_dim ** -0.5; Gemma3 by query_pre_attn_scalar ** -0.5.
        self.query_scale = (args.head_dim / query_pre_attn_scalar) ** 0.5

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                batch: PackedBatch) -> torch.Tensor:
        q, kv = self.qkv(x).split(self.sizes, dim=-1)
        q = self.q_norm(q.reshape(-1, self.num_heads, self.head_dim))
        k, v = kv.reshape(-1, 2, self.num_kv_heads, self.head_dim).unbind(1)
        q, k = apply_rotary(q, cos, sin), apply_rotary(self.k_norm(k), cos, sin)
        if self.query_scale != 1.0:
            q = q * self.query_scale
        out = attention(q, k, v, batch, causal=self.causal,  # shared prefixes: once
                        sliding_window=self.sliding_window)
        return self.o_proj(out)


class Gemma3Layer(nn.Module):
    def __init__(self, args: DecoderArgs, sliding_window: int | None,
                 query_pre_attn_scalar: float) -> None:
        super().__init__()
        eps = args.rms_norm_eps
        self.input_layernorm = GemmaRMSNorm(args.hidden_size, eps)
        self.self_attn = Gemma3Attention(args, sliding_window, query_pre_attn_scalar)
        self.post_attention_layernorm = GemmaRMSNorm(args.hidden_size, eps)
        self.pre_feedforward_layernorm = GemmaRMSNorm(args.hidden_size, eps)
        self.mlp = FeedForward(args)
        self.post_feedforward_layernorm = GemmaRMSNorm(args.hidden_size, eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                batch: PackedBatch) -> torch.Tensor:
        x = x + self.post_attention_layernorm(
            self.self_attn(self.input_layernorm(x), cos, sin, batch))
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))


# Parts of a fused projection, in the order they are concatenated.
_FUSED = {
    re.compile(r"layers\.(\d+)\.self_attn\.(q|k|v)_proj\.(weight|bias)"): ("self_attn.qkv",
                                                                            ("q", "k", "v")),
    re.compile(r"layers\.(\d+)\.mlp\.(gate|up)_proj\.(weight)"): ("mlp.gate_up",
                                                                ("gate", "up")),
}
_IGNORED = re.compile(r"^lm_head\.|rotary_emb\.|inv_freq$")


class Gemma3TextModel(PoolingModel):
    """Gemma3's text body turned into a pooling model; for ``classify``, the ``score``
    head of ``Gemma3TextForSequenceClassification`` on the pooled row."""

    lora_modules = llama_lora_modules("self_attn")

    def __init__(self, config: Any, task: str) -> None:
        super().__init__()
        if task == "reward":
            raise ValueError("Gemma3 has no reward head; use task='embed' or 'classify'.")
        self.config = config
        self.architecture = architecture_of(config)
        args = gemma3_args(config)
        self.shares_prefixes = args.causal
        scalar = getattr(config, "query_pre_attn_scalar", None) or args.head_dim
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.embed_scale = args.hidden_size ** 0.5
        self.layers = nn.ModuleList(Gemma3Layer(args, window, scalar)
                                    for window in args.sliding_windows)
        self.layer_kinds = ["sliding" if window is not None else "full"
                            for window in args.sliding_windows]
        self.norm = GemmaRMSNorm(args.hidden_size, args.rms_norm_eps)
        self.rotary = nn.ModuleDict({
            "full": RotaryEmbedding(config, args.head_dim, "full_attention"),
            "sliding": RotaryEmbedding(config, args.head_dim, "sliding_attention"),
        })
        self.attention_shape = AttentionShape(args.num_heads, args.num_kv_heads, args.head_dim,
                                              args.causal)
        if task == "classify":
            self.classifier = nn.Linear(args.hidden_size, config.num_labels, bias=False)
            # As decoder.py's: the last token that is not the pad token, when causal.
            self.classify_pad_token_id = (getattr(config, "pad_token_id", None)
                                          if args.causal else None)

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        x = self.embed_tokens(batch.input_ids)
        # The scale in the weights' dtype, as Gemma3TextScaledWordEmbedding rounds it.
        x = x * torch.tensor(self.embed_scale, dtype=x.dtype)
        rotary = {kind: rope(batch.positions, x.dtype) for kind, rope in self.rotary.items()
                  if kind in self.layer_kinds}
        for kind, layer in zip(self.layer_kinds, self.layers, strict=True):
            x = layer(x, *rotary[kind], batch)
        return self.norm(x)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy checkpoint tensors in, fusing q/k/v and gate/up; every parameter must be set."""
        loader = ParameterLoader(self, self.architecture)
        for raw_name, tensor in weights:
            name = raw_name.removeprefix("model.")
            if _IGNORED.search(name):
                continue
            if name == "score.weight":  # the classifier's; other tasks load the body only
                if self.classifier is not None:
                    loader.assign("classifier.weight", tensor)
                continue
            for pattern, (target, order) in _FUSED.items():
                match = pattern.fullmatch(name)
                if match:
                    layer, part, kind = match.groups()
                    loader.add_part(f"layers.{layer}.{target}.{kind}", part, order, tensor)
                    break
            else:
                loader.assign(re.sub(r"\.mlp\.down_proj\.", ".mlp.down.", name), tensor)
        missing = loader.finish()
        if "classifier.weight" in missing:
            raise ValueError(f"task='classify' needs a classification head, but this "
                             f"{self.architecture} checkpoint has no `score.weight` tensor.")
        if missing:
            raise missing_tensors_error(missing)
