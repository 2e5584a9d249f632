"""Decoder-only families (Qwen2, Qwen3, Llama, Mistral) as pooling models, on packed tokens.

Causal, or bidirectional where the config says so (``is_causal: false``, or an
architecture of ``BIDIRECTIONAL_DECODERS``: voyage-4-nano, llama-nemotron-embed):
then every token attends to its whole sequence. Voyage's checkpoints add a per-token
projection (``linear``, no bias) to the output.

One pre-norm transformer covers the four families; they differ only in a few
switches read from the Hugging Face config (projection biases, Qwen3's per-head
q/k RMSNorm, sliding-window layers). Query/key/value and gate/up are fused
into one projection each; ``load_weights`` maps checkpoint names explicitly.

The language-model head is never built: a checkpoint becomes a pooling model.
What sits on top of the hidden states depends on the task and architecture:

- ``classify``: ``score`` (linear, no bias) on the pooled row, as in
  ``*ForSequenceClassification``; a ``*ForCausalLM`` needs a ``score.weight``
  in its checkpoint.
- ``reward`` on ``*ForRewardModel``, ``*ForProcessRewardModel`` (``score.0`` -> ReLU
  -> ``score.2``) and ``*ForTokenClassification`` (``score``): the per-token head
  (``token_head``, ``decoder_heads.py``), applied to every token.
- anything else: the bare hidden states (embed: LAST + normalise; reward on a
  converted causal LM: ALL).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cenote.config.hf import architecture_of, is_bidirectional, rope_settings
from cenote.models.batch import PackedBatch
from cenote.models.decoder_heads import decoder_token_head
from cenote.models.interface import AttentionShape, PoolingModel
from cenote.models.kernels import rowwise_for
from cenote.models.layers import fp32_copies
from cenote.models.linear import Linear
from cenote.models.loading import ParameterLoader, missing_tensors_error
from cenote.models.lora import llama_lora_modules
from cenote.models.prefix_sharing import attention

_ACTIVATIONS = {
    "silu": F.silu,
    "swish": F.silu,
    "gelu": F.gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
}
# rope_type values whose frequencies are fixed once the model is loaded. "dynamic"
# only rescales beyond max_position_embeddings, which max_model_len never exceeds.
_SUPPORTED_ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn")


@dataclass
class DecoderArgs:
    """The shape of a decoder and the switches that tell the families apart."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    hidden_act: str
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    qk_norm: bool
    sliding_windows: list[int | None]  # per layer; None = full attention
    causal: bool

    @classmethod
    def from_hf(cls, config: Any) -> DecoderArgs:
        model_type = config.model_type
        num_layers = config.num_hidden_layers
        num_heads = config.num_attention_heads
        attention_bias = bool(getattr(config, "attention_bias", False))
        window = getattr(config, "sliding_window", None)
        if model_type == "mistral":
            windows = [window] * num_layers
        else:
            # Qwen2/Qwen3 name each layer's kind; sliding_window is None unless enabled.
            kinds = getattr(config, "layer_types", None) or ["full_attention"] * num_layers
            windows = [window if kind == "sliding_attention" else None for kind in kinds]
        if config.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"Unsupported hidden_act {config.hidden_act!r} for {model_type}.")
        return cls(
            vocab_size=config.vocab_size,
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_layers=num_layers,
            num_heads=num_heads,
            num_kv_heads=getattr(config, "num_key_value_heads", None) or num_heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // num_heads,
            rms_norm_eps=config.rms_norm_eps,
            hidden_act=config.hidden_act,
            # Qwen2 always has q/k/v biases and never an output bias.
            qkv_bias=True if model_type == "qwen2" else attention_bias,
            o_bias=False if model_type == "qwen2" else attention_bias,
            mlp_bias=bool(getattr(config, "mlp_bias", False)),
            qk_norm=model_type == "qwen3" or architecture_of(config).startswith("VoyageQwen3"),
            sliding_windows=windows,
            causal=not is_bidirectional(config),
        )


def rope_frequencies(config: Any, head_dim: int, layer_type: str | None = None
                     ) -> tuple[torch.Tensor, float]:
    """Rotary inverse frequencies ``[head_dim // 2]`` and the cos/sin scale; with
    ``layer_type``, those of that kind of layer (Gemma3's RoPE per layer type).

    Scaled variants come from transformers' own ``ROPE_INIT_FUNCTIONS`` so they
    match the reference exactly.
    """
    rope_type, params = rope_settings(config)
    if layer_type is not None:
        params = params.get(layer_type) or {}
        rope_type = params.get("rope_type", "default")
    if rope_type not in _SUPPORTED_ROPE_TYPES:
        raise ValueError(
            f"rope_type {rope_type!r} is not supported by the native decoder; "
            f"supported: {', '.join(_SUPPORTED_ROPE_TYPES)}."
        )
    if rope_type == "default":
        base = params.get("rope_theta", getattr(config, "rope_theta", 10000.0))
        exponents = torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim
        return 1.0 / (base**exponents), 1.0
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    by_layer = {} if layer_type is None else {"layer_type": layer_type}
    inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](config, torch.device("cpu"), **by_layer)
    return inv_freq.float(), float(scaling)


class RotaryEmbedding(nn.Module):
    """cos/sin of each token's position, shared by every layer of a forward pass."""

    def __init__(self, config: Any, head_dim: int, layer_type: str | None = None) -> None:
        super().__init__()
        # A plain attribute, not a buffer: model.to(bfloat16) must not round the frequencies.
        self.inv_freq, self.scaling = rope_frequencies(config, head_dim, layer_type)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype
                ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.inv_freq.device != positions.device:
            self.inv_freq = self.inv_freq.to(positions.device)
        freqs = positions.float().unsqueeze(1) * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1).unsqueeze(1)  # [T, 1, head_dim]
        return (emb.cos() * self.scaling).to(dtype), (emb.sin() * self.scaling).to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (``[T, heads, head_dim]``) by its positions (half-split layout)."""
    kernel = rowwise_for(x)
    if (kernel is not None and x.dim() == 3 and x.shape[-1] % 32 == 0
            and cos.dtype == sin.dtype == x.dtype and cos.is_contiguous()
            and sin.is_contiguous()):
        return kernel.rotary(x, cos, sin)  # one pass, the same roundings as below
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = rowwise_for(x)
        if (kernel is not None and self.weight.dtype == x.dtype
                and x.shape[-1] == self.weight.shape[0]):
            # One pass, the same two roundings as below (csrc/rowwise.c).
            return kernel.rms_norm(x, *fp32_copies(self, self.weight), self.eps)
        # In fp32, cast back before the weight: the order the reference uses.
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, args: DecoderArgs, sliding_window: int | None) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads = args.num_heads, args.num_kv_heads
        self.head_dim = args.head_dim
        self.sizes = [args.num_heads * args.head_dim, 2 * args.num_kv_heads * args.head_dim]
        self.qkv = Linear(args.hidden_size, sum(self.sizes), bias=args.qkv_bias)
        self.o_proj = Linear(args.num_heads * args.head_dim, args.hidden_size,
                             bias=args.o_bias)
        self.q_norm = RMSNorm(args.head_dim, args.rms_norm_eps) if args.qk_norm else None
        self.k_norm = RMSNorm(args.head_dim, args.rms_norm_eps) if args.qk_norm else None
        self.sliding_window = sliding_window
        self.causal = args.causal

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                batch: PackedBatch, pooled_only: bool = False) -> torch.Tensor:
        q, kv = self.qkv(x).split(self.sizes, dim=-1)
        q = q.view(-1, self.num_heads, self.head_dim)
        k, v = kv.view(-1, 2, self.num_kv_heads, self.head_dim).unbind(1)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        out = attention(q, k, v, batch, causal=self.causal,  # shared prefixes: once
                        sliding_window=self.sliding_window, pooled_only=pooled_only)
        return self.o_proj(out)


class FeedForward(nn.Module):
    """Gated MLP: ``down(act(gate(x)) * up(x))`` with gate and up fused."""

    def __init__(self, args: DecoderArgs) -> None:
        super().__init__()
        self.gate_up = Linear(args.hidden_size, 2 * args.intermediate_size,
                              bias=args.mlp_bias)
        self.down = Linear(args.intermediate_size, args.hidden_size, bias=args.mlp_bias)
        self.act = _ACTIVATIONS[args.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up(x)
        kernel = rowwise_for(gate_up) if self.act is F.silu else None
        if kernel is not None and gate_up.dim() == 2 and gate_up.shape[-1] % 32 == 0:
            return self.down(kernel.silu_mul(gate_up))  # one pass, the same two roundings
        gate, up = gate_up.chunk(2, dim=-1)
        return self.down(self.act(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, args: DecoderArgs, sliding_window: int | None) -> None:
        super().__init__()
        self.input_norm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.attn = Attention(args, sliding_window)
        self.post_attn_norm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.mlp = FeedForward(args)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                batch: PackedBatch, pooled_only: bool = False) -> torch.Tensor:
        """``pooled_only``: as ``BertLayer``'s."""
        attn = self.attn(self.input_norm(x), cos, sin, batch, pooled_only)
        if pooled_only:
            x = x[batch.pooled_rows]
        x = x + attn
        return x + self.mlp(self.post_attn_norm(x))


# Checkpoint name (after the "model." prefix is cut) -> our name.
_RENAMES = [
    (r"layers\.(\d+)\.input_layernorm\.", r"layers.\1.input_norm."),
    (r"layers\.(\d+)\.post_attention_layernorm\.", r"layers.\1.post_attn_norm."),
    (r"layers\.(\d+)\.self_attn\.o_proj\.", r"layers.\1.attn.o_proj."),
    (r"layers\.(\d+)\.self_attn\.(q|k)_norm\.", r"layers.\1.attn.\2_norm."),
    (r"layers\.(\d+)\.mlp\.down_proj\.", r"layers.\1.mlp.down."),
]
# Parts of a fused projection, in the order they are concatenated.
_FUSED = {
    re.compile(r"layers\.(\d+)\.self_attn\.(q|k|v)_proj\.(weight|bias)"): ("attn.qkv",
                                                                            ("q", "k", "v")),
    re.compile(r"layers\.(\d+)\.mlp\.(gate|up)_proj\.(weight|bias)"): ("mlp.gate_up",
                                                                        ("gate", "up")),
}
_IGNORED = re.compile(r"^lm_head\.|rotary_emb\.inv_freq$")
# A bidirectional Voyage checkpoint's per-token projection.
_PROJECTION = "linear.weight"


class DecoderModel(PoolingModel):
    """A Qwen2/Qwen3/Llama/Mistral decoder turned into a pooling model for ``task``.

    With ``batch.pooled`` set, the last layer runs for the pooled rows only (as in
    ``BertFamilyModel``).
    """

    computes_pooled_rows_only = True
    builds_head_from_tokens = True
    lora_modules = llama_lora_modules("attn")

    def __init__(self, config: Any, task: str) -> None:
        super().__init__()
        self.config = config
        self.architecture = architecture_of(config)
        args = DecoderArgs.from_hf(config)
        self.shares_prefixes = args.causal
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(args, window) for window in args.sliding_windows)
        self.norm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.rotary = RotaryEmbedding(config, args.head_dim)
        self.attention_shape = AttentionShape(args.num_heads, args.num_kv_heads, args.head_dim,
                                              args.causal)
        self.projection = (nn.Linear(args.hidden_size, config.num_labels, bias=False)
                           if self.architecture.startswith("VoyageQwen3") else None)
        # The method and token ids when the head is built from LM-head rows (vLLM's
        # classifier_from_token; see use_head_from_tokens).
        self.head_from_tokens: tuple[str, list[int]] | None = None
        if task == "classify":
            self.classifier = nn.Linear(args.hidden_size, config.num_labels, bias=False)
            # transformers' *ForSequenceClassification scores the last token that is not
            # the pad token (often EOS, which chat prompts end with): see ModelRunner. A
            # bidirectional model's rows depend on every token, so none is skipped.
            self.classify_pad_token_id = (getattr(config, "pad_token_id", None)
                                          if args.causal else None)
        elif task == "reward":  # a reward model's or a token classifier's head, if any
            self.token_head = decoder_token_head(self.architecture, args.hidden_size, config)

    def forward(self, batch: PackedBatch, inputs_embeds: torch.Tensor | None = None,
                rotary: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """``inputs_embeds`` and ``rotary`` (cos, sin): a vision-language model's door,
        its vision rows and multimodal positions (``qwen2_vl.py``)."""
        x = self.embed_tokens(batch.input_ids) if inputs_embeds is None else inputs_embeds
        cos, sin = self.rotary(batch.positions, x.dtype) if rotary is None else rotary
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, batch, pooled_only=i == last and batch.pooled is not None)
        x = self.norm(x)
        return x if self.projection is None else self.projection(x)

    def use_head_from_tokens(self, method: str, token_ids: list[int]) -> None:
        """Build the classifier from the LM head's rows for ``token_ids`` when the weights
        load. Such a head reads the next-token logits at the literal last token (as
        vLLM scores it), so trailing pad tokens are not skipped."""
        self.head_from_tokens = (method, token_ids)
        self.classify_pad_token_id = None

    def _head_from_lm_head_rows(self, lm_head: torch.Tensor | None,
                                loader: ParameterLoader) -> None:
        """The classifier from the LM head's rows for ``head_from_tokens`` (the input
        embeddings when the checkpoint ties them): the true row minus the false row
        (``from_2_way_softmax``: sigmoid of it is the two-way softmax's true
        probability), or the rows themselves."""
        method, token_ids = self.head_from_tokens
        if lm_head is None:
            if not getattr(self.config, "tie_word_embeddings", False):
                raise ValueError("classifier_from_token needs the checkpoint's lm_head.weight, "
                                 "which it does not have.")
            lm_head = self.embed_tokens.weight.detach()
        rows = lm_head[token_ids].float()
        if method == "from_2_way_softmax":
            rows = rows[1:2] - rows[0:1]
        loader.assign("classifier.weight", rows)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy checkpoint tensors in, fusing q/k/v and gate/up; every parameter must be set."""
        loader = ParameterLoader(self, self.architecture)
        lm_head = None
        for raw_name, tensor in weights:
            name = raw_name.removeprefix("model.")
            if name == "lm_head.weight" and self.head_from_tokens and self.classifier is not None:
                lm_head = tensor
                continue
            if _IGNORED.search(name):
                continue
            if name == _PROJECTION and self.projection is not None:
                loader.assign("projection.weight", tensor)
                continue
            if name.startswith("score."):
                # The head belongs to one task; other tasks load the body only.
                if self.classifier is not None and name == "score.weight":
                    loader.assign("classifier.weight", tensor)
                elif self.token_head is not None:
                    loader.assign("token_head." + name, tensor)
                continue
            for pattern, (target, order) in _FUSED.items():
                match = pattern.fullmatch(name)
                if match:
                    layer, part, kind = match.groups()
                    loader.add_part(f"layers.{layer}.{target}.{kind}", part, order, tensor)
                    break
            else:
                for pattern, replacement in _RENAMES:
                    name = re.sub(pattern, replacement, name)
                loader.assign(name, tensor)
        if self.head_from_tokens and self.classifier is not None:
            self._head_from_lm_head_rows(lm_head, loader)
        missing = loader.finish()
        if "classifier.weight" in missing:
            raise ValueError(
                f"task='classify' needs a classification head, but this {self.architecture} "
                "checkpoint has no `score.weight` tensor. Load a *ForSequenceClassification "
                "checkpoint, or use task='embed' or 'reward'."
            )
        if missing:
            raise missing_tensors_error(missing)
