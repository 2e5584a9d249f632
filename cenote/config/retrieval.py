"""Retrieval outputs beyond one vector, as a model's folder declares them:

- late interaction (ColBERT): Sentence-Transformers ``MultiVectorEncoder`` folders,
  PyLate's (legacy) ColBERT folders, Stanford ColBERT folders (architecture
  ``HF_ColBERT``: the projection is ``linear.weight`` beside the encoder's weights), and
  BGE-M3's ``colbert_linear.pt``;
- sparse vectors: Sentence-Transformers ``SparseEncoder`` SPLADE folders (a masked-LM
  head, then max over tokens of log(1 + relu)), a raw masked-LM folder loaded with
  vLLM's ``BertSpladeSparseEmbeddingModel`` architecture (the same, max pooling), and
  BGE-M3's ``sparse_linear.pt`` (a relu weight per token, the largest per token id).
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cenote.compat.vllm import ARCHITECTURE_LAYOUTS
from cenote.config.hf import VISUAL_RETRIEVERS
from cenote.config.hub import read_json, read_json_list
from cenote.config.sentence_transformers import is_token_level_dense

# ColBERT's defaults where a PyLate folder leaves them out (PyLate's own).
_PYLATE_DEFAULTS = {"query_prefix": "[Q] ", "document_prefix": "[D] ", "query_length": 32,
                    "document_length": 180}


@dataclass
class LateInteractionConfig:
    """How a model's per-token vectors are made and scored (MaxSim)."""

    # Text put before queries and documents ("[unused0] " / "[Q] "...).
    query_prompt: str = ""
    document_prompt: str = ""
    # Queries: with expansion, padded with the mask token to exactly this many tokens
    # (cut to it if longer); without, cut to it. Documents are cut to document_length.
    query_length: int | None = None
    document_length: int | None = None
    query_expansion: bool = False
    # Whether the other tokens attend to the expansion tokens (PyLate's
    # attend_to_expansion_tokens; classic ColBERT: no).
    expansion_attended: bool = False
    expansion_token: str | None = None  # None: the tokenizer's mask token
    # Words whose tokens are left out of a document's vectors (punctuation, in ColBERT).
    skiplist_words: list[str] = field(default_factory=list)
    skiplist_queries: bool = False
    # The per-token projection: a Sentence-Transformers/PyLate Dense folder, the model's
    # own folder (Stanford ColBERT's linear.weight), or BGE-M3's colbert_linear.pt; None:
    # the hidden states as they are.
    projection: Path | None = None
    projection_bias: bool = False
    projection_out: int | None = None
    # BGE-M3 leaves [CLS] out of its vectors and divides MaxSim by the query's vectors.
    drop_first_token: bool = False
    mean_over_query: bool = False


@dataclass
class SparseConfig:
    """How a model's sparse (vocabulary-indexed) vector is made."""

    kind: str  # "splade" (masked-LM head) or "lexical" (BGE-M3's sparse_linear)
    max_active_dims: int | None = None
    pooling: str = "max"  # SPLADE: max or sum over tokens
    activation: str = "relu"  # SPLADE: relu or log1p_relu (one more log1p)
    head: Path | None = None  # BGE-M3's sparse_linear.pt


@dataclass
class RetrievalConfig:
    late_interaction: LateInteractionConfig | None = None
    sparse: SparseConfig | None = None
    # Whether the model also has one dense vector per input (BGE-M3 does; a
    # MultiVectorEncoder or a SPLADE model does not).
    dense: bool = True


def read_retrieval_config(path: Path, architecture: str = "") -> RetrievalConfig:
    """What ``path`` declares beyond a dense vector (nothing, for most models): its
    files first, then its ``architecture`` (from ``config.json`` or an override)."""
    if (path / "colbert_linear.pt").is_file() or (path / "sparse_linear.pt").is_file():
        return _bge_m3(path)
    saved = read_json(path / "config_sentence_transformers.json")
    modules = [m for m in read_json_list(path / "modules.json") if isinstance(m, dict)]
    kinds = [m.get("type", "") for m in modules]
    if saved.get("model_type") == "SparseEncoder" or any(k.endswith("SpladePooling")
                                                          for k in kinds):
        return RetrievalConfig(sparse=_splade(path, modules, saved), dense=False)
    if (saved.get("model_type") in ("MultiVectorEncoder", "ColBERT")
            or any(k.endswith("MultiVectorMask") or k.startswith("pylate.") for k in kinds)):
        return RetrievalConfig(late_interaction=_colbert(path, modules, saved), dense=False)
    if architecture in VISUAL_RETRIEVERS:  # ColQwen2: its projection is in the model
        return RetrievalConfig(late_interaction=LateInteractionConfig(), dense=False)
    layout = ARCHITECTURE_LAYOUTS.get(architecture)
    if layout == "splade":  # SpladePooling's defaults: max over tokens, relu
        return RetrievalConfig(sparse=SparseConfig(kind="splade"), dense=False)
    if layout == "stanford-colbert":
        # Plain tokenisation, no markers or query expansion, as vLLM runs these folders.
        return RetrievalConfig(late_interaction=LateInteractionConfig(projection=path),
                               dense=False)
    return RetrievalConfig()


def _bge_m3(path: Path) -> RetrievalConfig:
    late = sparse = None
    if (path / "colbert_linear.pt").is_file():
        late = LateInteractionConfig(projection=path / "colbert_linear.pt", projection_bias=True,
                                     drop_first_token=True, mean_over_query=True)
    if (path / "sparse_linear.pt").is_file():
        sparse = SparseConfig(kind="lexical", head=path / "sparse_linear.pt")
    return RetrievalConfig(late_interaction=late, sparse=sparse)


def _splade(path: Path, modules: list[dict[str, Any]], saved: dict[str, Any]) -> SparseConfig:
    pooling = next((read_json(path / m.get("path", "") / "config.json") for m in modules
                    if m.get("type", "").endswith("SpladePooling")), {})
    strategy = pooling.get("pooling_strategy", "max")
    activation = pooling.get("activation_function", "relu")
    if strategy not in ("max", "sum") or activation not in ("relu", "log1p_relu"):
        raise ValueError(f"SpladePooling {strategy!r}/{activation!r} is not supported; "
                         "supported: max or sum pooling, relu or log1p_relu activation.")
    dims = saved.get("max_active_dims")
    if dims is not None and (not isinstance(dims, int) or dims < 1):
        raise ValueError(f"max_active_dims must be a positive integer, not {dims!r}.")
    return SparseConfig(kind="splade", max_active_dims=dims, pooling=strategy,
                        activation=activation)


def _colbert(path: Path, modules: list[dict[str, Any]], saved: dict[str, Any]
             ) -> LateInteractionConfig:
    late = LateInteractionConfig()
    transformer = read_json(path / "sentence_bert_config.json")
    prompts = saved.get("prompts") or {}
    if "query_prefix" in saved or "document_prefix" in saved or any(
            m.get("type", "").startswith("pylate.") for m in modules):
        # A PyLate folder: its prefixes, lengths and expansion as PyLate writes them.
        options = {**_PYLATE_DEFAULTS, **saved}
        late.query_prompt = options["query_prefix"] + (prompts.get("query") or "")
        late.document_prompt = options["document_prefix"] + (prompts.get("document") or "")
        late.query_length = options["query_length"]
        late.document_length = options["document_length"]
        late.query_expansion = bool(options.get("do_query_expansion", True))
        late.expansion_attended = bool(options.get("attend_to_expansion_tokens", False))
        late.skiplist_words = list(options.get("skiplist_words", string.punctuation))
    else:  # a Sentence-Transformers MultiVectorEncoder
        late.query_prompt = prompts.get("query") or ""
        late.document_prompt = next((prompts[k] for k in ("document", "passage", "corpus")
                                     if prompts.get(k)), "")
        late.query_length = transformer.get("query_length")
        late.document_length = transformer.get("document_length")
        expansion = transformer.get("query_expansion")
        if expansion:
            if expansion.get("strategy", "fixed") != "fixed":
                raise ValueError(f"query_expansion strategy {expansion.get('strategy')!r} is "
                                 "not supported; supported: fixed.")
            late.query_expansion = True
            late.query_length = expansion.get("length", 32)
            late.expansion_attended = bool(expansion.get("attend", False))
            late.expansion_token = expansion.get("token")
        mask = next((read_json(path / m.get("path", "") / "config.json") for m in modules
                     if m.get("type", "").endswith("MultiVectorMask")), {})
        late.skiplist_words = list(mask.get("skiplist_words") or [])
        tasks = mask.get("skiplist_tasks") or ["document"]
        late.skiplist_queries = "query" in ([tasks] if isinstance(tasks, str) else tasks)
    for module in modules:
        folder = path / module.get("path", "")
        cfg = read_json(folder / "config.json")
        if module.get("type", "").rsplit(".", 1)[-1] == "Dense" and is_token_level_dense(
                module, cfg):
            activation = cfg.get("activation_function") or "torch.nn.modules.linear.Identity"
            if not activation.endswith("Identity"):
                raise ValueError(f"A ColBERT projection with activation {activation!r} is not "
                                 "supported; supported: Identity.")
            late.projection = folder
            late.projection_bias = bool(cfg.get("bias", True))
            late.projection_out = cfg.get("out_features")
    return late
