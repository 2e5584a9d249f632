"""Configs of checkpoints whose config class is their own code (``auto_map``), read
here instead: NomicBert (nomic-embed-text) and Alibaba's GTE "new" models.

cenote runs these architectures natively (``cenote/models/nomic_bert.py``,
``cenote/models/gte.py``), so their remote code is never executed, not even the
configuration class. The stand-ins below take the fields and defaults of the
authors' ``configuration_hf_nomic_bert.py`` (a ``GPT2Config``) and GTE's
``configuration.py``, with the names cenote reads (``hidden_size``, ...) mapped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import PretrainedConfig

from cenote.config.hub import read_json


class NomicBertConfig(PretrainedConfig):
    """nomic-embed-text's config: GPT-2 names (``n_embd``, ``n_layer``, ...) plus its own."""

    model_type = "nomic_bert"
    attribute_map = {"hidden_size": "n_embd", "num_hidden_layers": "n_layer",
                     "num_attention_heads": "n_head"}

    def __init__(self, vocab_size: int = 50257, n_positions: int = 1024, n_embd: int = 768,
                 n_layer: int = 12, n_head: int = 12, n_inner: int | None = None,
                 activation_function: str = "gelu_new", layer_norm_epsilon: float = 1e-5,
                 prenorm: bool = False, rotary_emb_fraction: float = 0.0,
                 rotary_emb_base: float = 10_000, rotary_emb_scale_base: float | None = None,
                 rotary_emb_interleaved: bool = False, rotary_scaling_factor: float | None = None,
                 max_trained_positions: int = 2048, qkv_proj_bias: bool = True,
                 mlp_fc1_bias: bool = True, mlp_fc2_bias: bool = True,
                 type_vocab_size: int = 2, pad_vocab_size_multiple: int = 1,
                 parallel_block: bool = False, use_rms_norm: bool = False, causal: bool = False,
                 **kwargs: Any) -> None:
        self.vocab_size, self.n_positions, self.n_embd = vocab_size, n_positions, n_embd
        self.n_layer, self.n_head, self.n_inner = n_layer, n_head, n_inner
        self.activation_function, self.layer_norm_epsilon = activation_function, layer_norm_epsilon
        self.prenorm, self.rotary_emb_fraction = prenorm, rotary_emb_fraction
        self.rotary_emb_base, self.rotary_emb_scale_base = rotary_emb_base, rotary_emb_scale_base
        self.rotary_emb_interleaved = rotary_emb_interleaved
        self.rotary_scaling_factor = rotary_scaling_factor
        self.max_trained_positions = max_trained_positions
        self.qkv_proj_bias, self.mlp_fc1_bias, self.mlp_fc2_bias = (qkv_proj_bias, mlp_fc1_bias,
                                                                     mlp_fc2_bias)
        self.type_vocab_size, self.pad_vocab_size_multiple = (type_vocab_size,
                                                              pad_vocab_size_multiple)
        self.parallel_block, self.use_rms_norm, self.causal = parallel_block, use_rms_norm, causal
        super().__init__(**kwargs)

    @property
    def default_theta(self) -> float:
        """The RoPE base a ``rope_scaling`` override (vLLM's context extension) keeps."""
        return float(self.rotary_emb_base)

    @property
    def max_position_embeddings(self) -> int:
        """The longest input served: a stated ``max_position_embeddings`` (config.json or
        ``hf_overrides``); else with rotary positions and no ``rotary_scaling_factor``
        the length it was trained to (``max_trained_positions``), as vLLM limits it;
        with the factor (dynamic NTK past that length) or learned positions, ``n_positions``.
        Learned positions never go past ``n_positions`` (their table's length)."""
        learned = self.rotary_emb_fraction <= 0
        stated = self.__dict__.get("_stated_max_positions")
        if stated is not None:
            return min(stated, self.n_positions) if learned else stated
        if learned or self.rotary_scaling_factor:
            return self.n_positions
        return min(self.n_positions, self.max_trained_positions)

    @max_position_embeddings.setter
    def max_position_embeddings(self, value: int | None) -> None:
        self.__dict__["_stated_max_positions"] = value

    def to_dict(self) -> dict[str, Any]:
        values = super().to_dict()
        stated = values.pop("_stated_max_positions", None)
        if stated is not None:
            values["max_position_embeddings"] = stated
        return values


class NewConfig(PretrainedConfig):
    """GTE "new" (gte-multilingual-base, gte-base-en-v1.5, their rerankers)."""

    model_type = "new"

    def __init__(self, vocab_size: int = 30528, hidden_size: int = 768,
                 num_hidden_layers: int = 12, num_attention_heads: int = 12,
                 intermediate_size: int = 3072, hidden_act: str = "gelu",
                 max_position_embeddings: int = 2048, type_vocab_size: int = 1,
                 layer_norm_type: str = "layer_norm", layer_norm_eps: float = 1e-12,
                 position_embedding_type: str = "rope", rope_theta: float = 10000.0,
                 rope_scaling: dict[str, Any] | None = None, pack_qkv: bool = True,
                 logn_attention_scale: bool = False, logn_attention_clip1: bool = False,
                 **kwargs: Any) -> None:
        self.vocab_size, self.hidden_size = vocab_size, hidden_size
        self.num_hidden_layers, self.num_attention_heads = num_hidden_layers, num_attention_heads
        self.intermediate_size, self.hidden_act = intermediate_size, hidden_act
        self.max_position_embeddings, self.type_vocab_size = (max_position_embeddings,
                                                              type_vocab_size)
        self.layer_norm_type, self.layer_norm_eps = layer_norm_type, layer_norm_eps
        self.position_embedding_type = position_embedding_type
        # Kept apart from transformers' own rope_scaling/rope_parameters handling: GTE's
        # "ntk" scaling is its own (see cenote.models.gte.gte_inv_freq).
        self.gte_rope_theta, self.gte_rope_scaling = float(rope_theta), rope_scaling
        self.pack_qkv = pack_qkv
        self.logn_attention_scale, self.logn_attention_clip1 = (logn_attention_scale,
                                                                logn_attention_clip1)
        super().__init__(**kwargs)

    # hf_overrides' rope_theta / rope_scaling reach a config as ``rope_parameters``
    # (cenote.config.hf.apply_hf_overrides); GTE reads them as its own fields, as vLLM
    # hands both to GTE's rotary embedding.
    @property
    def default_theta(self) -> float:
        return self.gte_rope_theta

    @property
    def rope_parameters(self) -> dict[str, Any]:
        scaling = dict(self.gte_rope_scaling or {})
        kind = scaling.pop("type", None) or scaling.pop("rope_type", None)
        return {**scaling, "rope_type": kind or "default", "rope_theta": self.gte_rope_theta}

    @rope_parameters.setter
    def rope_parameters(self, params: dict[str, Any] | None) -> None:
        if not params:
            return
        params = dict(params)
        self.gte_rope_theta = float(params.pop("rope_theta", self.gte_rope_theta))
        kind = params.pop("rope_type", None) or params.pop("type", None)
        self.gte_rope_scaling = None if kind in (None, "default") else {"type": kind, **params}


_STAND_INS: dict[str, type[PretrainedConfig]] = {"nomic_bert": NomicBertConfig,
                                                 "new": NewConfig}


def read_remote_code_config(path: Path) -> PretrainedConfig | None:
    """The stand-in config of a NomicBert or GTE "new" folder; None for other models."""
    values = read_json(Path(path) / "config.json")
    cls = _STAND_INS.get(values.get("model_type"))
    return None if cls is None else cls.from_dict(values)
