"""NomicBert (``NomicBertModel``: nomic-embed-text-v1 / v1.5) on packed tokens, by
architecture name: the checkpoint's own modelling code is never run.

Word and token-type embeddings and their norm, then post-norm layers (pre-norm where the
config says ``prenorm``) with one fused ``Wqkv`` projection, rotary positions on the
first ``rotary_emb_fraction`` of each head (learned positions when it is 0), and a
SwiGLU feed-forward (``fc11 * silu(fc12)``; GLU and GeGLU alike, or a plain GELU MLP),
biases only where the config has them. With ``rotary_scaling_factor``, sequences longer
than ``max_trained_positions`` get the authors' dynamic NTK base, each from its own
length. What the authors' code does is read from their ``modeling_hf_nomic_bert.py``;
``tests/reference_rotary_encoders.py`` restates it for the parity tests.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cenote.config.hf import rope_settings
from cenote.models.batch import PackedBatch
from cenote.models.decoder import rope_frequencies
from cenote.models.interface import AttentionShape, PoolingModel
from cenote.models.layers import LayerNorm
from cenote.models.loading import ParameterLoader
from cenote.models.rotary_encoder import (
    RotaryEncoderLayer,
    encoder_embeddings,
    rotary_cos_sin,
    token_sequence_lengths,
)

# activation_function -> the gate's function; others are a plain MLP with exact GELU
# (the authors' code hands its MLP F.gelu whatever the GELU's name).
_GATES = {"swiglu": F.silu, "glu": torch.sigmoid, "geglu": F.gelu}
_PLAIN = ("gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh")


def _check_supported(config: Any) -> None:
    unsupported = [name for name, bad in (
        ("rotary_emb_interleaved", config.rotary_emb_interleaved),
        ("rotary_emb_scale_base", config.rotary_emb_scale_base is not None),
        ("parallel_block", config.parallel_block), ("use_rms_norm", config.use_rms_norm),
        ("causal", config.causal), ("moe_every_n_layers", getattr(config, "moe_every_n_layers", 0)),
        ("norm_mlp", getattr(config, "norm_mlp", False))) if bad]
    if unsupported:
        raise ValueError(f"NomicBert with {', '.join(unsupported)} is not supported natively "
                         "(no published text checkpoint uses it).")
    if config.activation_function not in (*_GATES, *_PLAIN):
        raise ValueError(f"Unsupported NomicBert activation_function "
                         f"{config.activation_function!r}.")


def _scaled_rope(config: Any, rotary_dim: int) -> tuple[torch.Tensor, float] | None:
    """Inverse frequencies and cos/sin scale of a RoPE override, as transformers computes
    them for the rotary channels; None without one."""
    rope_type, params = rope_settings(config)
    if not params or rope_type == "default" and params.get("rope_theta") in (
            None, float(config.rotary_emb_base)):
        return None
    scaled = copy.deepcopy(config)
    scaled.rope_parameters = {**params, "partial_rotary_factor": config.rotary_emb_fraction}
    return rope_frequencies(scaled, rotary_dim)  # (YaRN and the like take the config's)


def _inner_size(config: Any) -> int:
    hidden = config.n_embd
    if config.activation_function not in _GATES:
        return config.n_inner or 4 * hidden
    inner = config.n_inner or int(8 * hidden / 3)
    return (inner + 255) // 256 * 256  # the authors' gated MLP rounds to a multiple of 256


class NomicBertModel(PoolingModel):
    """A NomicBert encoder. With ``batch.pooled`` set, the last layer runs for the pooled
    rows only and the output has the rows of ``batch.pooled_rows``."""

    computes_pooled_rows_only = True
    lora_modules = (
        (r"encoder\.layers\.(\d+)\.attn\.Wqkv", r"layers.\1.qkv", None),
        (r"encoder\.layers\.(\d+)\.attn\.out_proj", r"layers.\1.attn_out", None),
        (r"encoder\.layers\.(\d+)\.mlp\.(?P<part>fc11|fc12)", r"layers.\1.mlp_in",
         ("fc11", "fc12")),
        (r"encoder\.layers\.(\d+)\.mlp\.fc1", r"layers.\1.mlp_in", None),
        (r"encoder\.layers\.(\d+)\.mlp\.fc2", r"layers.\1.mlp_out", None),
    )

    def __init__(self, config: Any, task: str) -> None:
        super().__init__()
        if task != "embed":
            raise ValueError(f"NomicBertModel serves embeddings; task {task!r} is not "
                             "supported for it.")
        _check_supported(config)
        self.config = config
        hidden, heads = config.n_embd, config.n_head
        head_dim = hidden // heads
        multiple = config.pad_vocab_size_multiple or 1
        vocab = (config.vocab_size + multiple - 1) // multiple * multiple
        self.word_embeddings = nn.Embedding(vocab, hidden)
        self.token_type_embeddings = (nn.Embedding(config.type_vocab_size, hidden)
                                      if config.type_vocab_size > 0 else None)
        self.rotary_dim = int(head_dim * config.rotary_emb_fraction)
        self.position_embeddings = (nn.Embedding(config.n_positions, hidden)
                                    if self.rotary_dim <= 0 else None)
        norm = functools.partial(LayerNorm, hidden, eps=config.layer_norm_epsilon)
        self.embedding_norm = norm()
        self.prenorm = bool(config.prenorm)
        gate = _GATES.get(config.activation_function)
        self.layers = nn.ModuleList(RotaryEncoderLayer(
            hidden, heads, _inner_size(config), norm, qkv_bias=config.qkv_proj_bias,
            out_bias=config.qkv_proj_bias, fc1_bias=config.mlp_fc1_bias,
            fc2_bias=config.mlp_fc2_bias, gate_act=gate, act=None if gate else "gelu",
            rotary_dim=self.rotary_dim) for _ in range(config.n_layer))
        self.base = float(config.rotary_emb_base)
        # vLLM's context extension: an hf_overrides rope_scaling (YaRN, linear, ...) on
        # the rotary channels; rotary_scaling_factor is then ignored, as vLLM does.
        self.scaled_rope = _scaled_rope(config, self.rotary_dim) if self.rotary_dim > 0 else None
        self.attention_shape = AttentionShape(heads, heads, head_dim, False)

    def _inv_freq(self, base: float | torch.Tensor) -> torch.Tensor:
        dim = self.rotary_dim
        exponents = torch.arange(0, dim, 2, dtype=torch.float32) / dim
        if isinstance(base, torch.Tensor):
            return 1.0 / (base.unsqueeze(-1) ** exponents.to(base.device))
        return 1.0 / (base ** exponents)

    def rotary(self, batch: PackedBatch, dtype: torch.dtype
               ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """cos/sin of each row; past ``max_trained_positions`` (with a
        ``rotary_scaling_factor``) the dynamic NTK base from the sequence's length."""
        if self.rotary_dim <= 0:
            return None, None
        if self.scaled_rope is not None:
            inv_freq, scale = self.scaled_rope
            return rotary_cos_sin(batch.positions, inv_freq, dtype, scale)
        factor, trained = self.config.rotary_scaling_factor, self.config.max_trained_positions
        if not factor or batch.max_len <= trained:
            return rotary_cos_sin(batch.positions, self._inv_freq(self.base), dtype)
        lens = token_sequence_lengths(batch).double()
        dim = self.rotary_dim
        scaled = self.base * ((factor * lens / trained) - (factor - 1)) ** (dim / (dim - 2))
        base = torch.where(lens > trained, scaled, torch.full_like(lens, self.base))
        return rotary_cos_sin(batch.positions, self._inv_freq(base.float()), dtype)

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        x = encoder_embeddings(batch, self.word_embeddings, self.token_type_embeddings,
                               self.position_embeddings, self.embedding_norm)
        cos, sin = self.rotary(batch, x.dtype)
        last = len(self.layers) - 1
        residual = None
        for i, layer in enumerate(self.layers):
            pooled_only = i == last and batch.pooled is not None
            if self.prenorm:
                x, residual = layer.forward_prenorm(x, residual, cos, sin, batch, pooled_only)
            else:
                x = layer(x, cos, sin, batch, pooled_only)
        return x  # pre-norm: the last feed-forward's output, as the authors' encoder returns

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy checkpoint tensors in (``fc11``/``fc12`` fused); every parameter must be set."""
        loader = ParameterLoader(self, "nomic_bert")
        for raw_name, tensor in weights:
            name = re.sub(r"^(model|bert)\.", "", raw_name)
            if re.match(r"(pooler|cls|lm_head|classifier)\.", name):
                continue  # heads the embedding model does not use
            match = re.fullmatch(r"encoder\.layers\.(\d+)\.mlp\.(fc11|fc12)\.(weight|bias)", name)
            if match:
                layer, part, kind = match.groups()
                loader.add_part(f"layers.{layer}.mlp_in.{kind}", part, ("fc11", "fc12"), tensor)
                continue
            loader.assign_renamed(name, tensor, _RENAMES)
        loader.finish_all()


# Checkpoint name (after a "model."/"bert." prefix is cut) -> ours.
_RENAMES = [
    (r"^embeddings\.", ""),
    (r"^emb_ln\.", "embedding_norm."),
    (r"^encoder\.layers\.(\d+)\.attn\.Wqkv\.", r"layers.\1.qkv."),
    (r"^encoder\.layers\.(\d+)\.attn\.out_proj\.", r"layers.\1.attn_out."),
    (r"^encoder\.layers\.(\d+)\.mlp\.fc1\.", r"layers.\1.mlp_in."),
    (r"^encoder\.layers\.(\d+)\.mlp\.fc2\.", r"layers.\1.mlp_out."),
    (r"^encoder\.layers\.(\d+)\.norm1\.", r"layers.\1.attn_norm."),
    (r"^encoder\.layers\.(\d+)\.norm2\.", r"layers.\1.mlp_norm."),
]
