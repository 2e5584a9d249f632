"""What a Sentence-Transformers folder says: its modules (pooling, Dense, Normalize)
and its maximum sequence length."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cenote.config.hub import read_json
from cenote.config.pooler import PoolingType


@dataclass
class DenseLayerConfig:
    """A Sentence-Transformers ``Dense`` module after pooling."""

    path: Path
    in_features: int
    out_features: int
    bias: bool
    activation: str


@dataclass
class SentenceTransformersConfig:
    pooling_type: PoolingType | None = None
    normalize: bool = False
    dense_layers: list[DenseLayerConfig] = field(default_factory=list)
    max_seq_length: int | None = None
    # Instructions put before a text (config_sentence_transformers.json): by name, and
    # the one applied when a request names none.
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    # Pooling's include_prompt: false leaves the instruction's tokens out of the mean.
    include_prompt: bool = True


def is_token_level_dense(module: dict[str, Any], cfg: dict[str, Any]) -> bool:
    """A Dense module that projects each token (ColBERT's), not the pooled sentence:
    PyLate's, or one whose input is the token embeddings."""
    return (module.get("type", "").startswith("pylate.")
            or cfg.get("module_input_name") == "token_embeddings")


def _torch_nn_activation(name: str | None) -> str:
    if not name:
        return "torch.nn.modules.linear.Identity"
    return name


def is_st_cross_encoder(path: Path) -> bool:
    """A folder saved by Sentence-Transformers (>= 5) from a ``CrossEncoder``: it has a
    ``modules.json`` too, but scores text pairs rather than embedding texts."""
    return (read_json(path / "config_sentence_transformers.json").get("model_type")
            == "CrossEncoder"
            or read_json(path / "sentence_bert_config.json").get("transformer_task")
            == "sequence-classification")


# A tokenizer's model_max_length at or above this means "not set" (HF uses 1e30).
_UNSET_MODEL_MAX_LENGTH = 1_000_000


def read_sentence_transformers_config(path: Path) -> SentenceTransformersConfig | None:
    """Read ``modules.json`` and its pooling, dense and normalize modules, if present
    (and not a cross-encoder's, see :func:`is_st_cross_encoder`)."""
    modules_file = path / "modules.json"
    if not modules_file.is_file() or is_st_cross_encoder(path):
        return None
    st = SentenceTransformersConfig()
    modules = json.loads(modules_file.read_text())
    for module in modules:
        kind = module.get("type", "").rsplit(".", 1)[-1]
        folder = path / module.get("path", "")
        if kind == "Pooling":
            pooling = json.loads((folder / "config.json").read_text())
            st.pooling_type = _st_pooling_type(pooling)
            st.include_prompt = bool(pooling.get("include_prompt", True))
        elif kind == "Normalize":
            # A token-level Normalize (late interaction) belongs to the multi-vector output.
            st.normalize = st.normalize or read_json(folder / "config.json").get(
                "module_input_name", "sentence_embedding") == "sentence_embedding"
        elif kind == "Dense":
            cfg = json.loads((folder / "config.json").read_text())
            if is_token_level_dense(module, cfg):
                continue  # a ColBERT projection: read by config.retrieval
            st.dense_layers.append(
                DenseLayerConfig(
                    path=folder,
                    in_features=cfg["in_features"],
                    out_features=cfg["out_features"],
                    bias=cfg.get("bias", True),
                    activation=_torch_nn_activation(cfg.get("activation_function")),
                )
            )
    st.max_seq_length = read_json(path / "sentence_bert_config.json").get("max_seq_length")
    if st.max_seq_length is None:
        # Sentence-Transformers 6 keeps it as the tokenizer's model_max_length instead.
        length = read_json(path / "tokenizer_config.json").get("model_max_length")
        if isinstance(length, int) and 0 < length < _UNSET_MODEL_MAX_LENGTH:
            st.max_seq_length = length
    saved = read_json(path / "config_sentence_transformers.json")
    prompts = saved.get("prompts") or {}
    if not isinstance(prompts, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in prompts.items()):
        raise ValueError(f"config_sentence_transformers.json prompts must map names to "
                         f"texts, not {prompts!r}.")
    st.prompts = prompts
    st.default_prompt_name = saved.get("default_prompt_name")
    if st.default_prompt_name is not None and st.default_prompt_name not in prompts:
        raise ValueError(f"config_sentence_transformers.json default_prompt_name "
                         f"{st.default_prompt_name!r} is not one of its prompts "
                         f"({', '.join(prompts) or 'none'}).")
    return st


_ST_POOLING_MODES = {
    "cls": PoolingType.CLS,
    "cls_token": PoolingType.CLS,
    "mean": PoolingType.MEAN,
    "mean_tokens": PoolingType.MEAN,
    "lasttoken": PoolingType.LAST,
    "last": PoolingType.LAST,
}


def _st_pooling_type(cfg: dict[str, Any]) -> PoolingType:
    mode = cfg.get("pooling_mode")  # Sentence-Transformers >= 6 names the mode directly
    if isinstance(mode, str):
        if mode.lower() not in _ST_POOLING_MODES:
            raise ValueError(
                f"Sentence-Transformers pooling mode {mode!r} is not supported; "
                "supported: cls, mean, lasttoken."
            )
        return _ST_POOLING_MODES[mode.lower()]
    if cfg.get("pooling_mode_cls_token"):
        return PoolingType.CLS
    if cfg.get("pooling_mode_lasttoken"):
        return PoolingType.LAST
    if cfg.get("pooling_mode_mean_tokens"):
        return PoolingType.MEAN
    modes = sorted(k for k, v in cfg.items() if k.startswith("pooling_mode") and v)
    raise ValueError(
        f"Sentence-Transformers pooling mode {', '.join(modes) or '(none)'} is not supported; "
        "supported: cls_token, mean_tokens, lasttoken."
    )
