"""Which implementation runs which architecture, and building a loaded model."""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cenote.config import ModelConfig
from cenote.config.hf import (
    BERT_FAMILY,
    BIDIRECTIONAL_DECODERS,
    classifier_from_token,
    is_dual_encoder,
)
from cenote.config.hub import read_json
from cenote.config.jina_v5 import JINA_V5_ARCHITECTURE, check_jina_embeddings_v5
from cenote.config.sentence_transformers import DenseLayerConfig, is_st_cross_encoder
from cenote.config.static import STATIC_MODEL_TYPE
from cenote.config.token_classification import (
    check_token_classifier_head,
    serves_masked_lm_head,
)
from cenote.models.interface import PoolingModel, Vocabulary
from cenote.models.kernels import native_attention, native_rowwise
from cenote.models.layers import settle_cpu_attention
from cenote.models.linear import Linear, pack_linears
from cenote.models.loading import iter_checkpoint, load_state_dict
from cenote.models.quantization import attention_dtype, check_int8_support
from cenote.pooling.heads import DenseLayers, resolve_torch_activation
from cenote.pooling.policy import PoolingPolicy
from cenote.pooling.pooler import HeadWeights, Pooler
from cenote.pooling.token_heads import SparseHead

logger = logging.getLogger(__name__)

# model_type -> "module:Class" of a native implementation.
NATIVE_MODEL_TYPES: dict[str, str] = {
    **{model_type: "cenote.models.bert:BertFamilyModel" for model_type in BERT_FAMILY},
    **{model_type: "cenote.models.decoder:DecoderModel"
       for model_type in ("qwen2", "qwen3", "llama", "mistral")},
    "gemma3_text": "cenote.models.gemma3:Gemma3TextModel",
    "modernbert": "cenote.models.modernbert:ModernBertModel",
    # Their other heads' checkpoints (NomicBertForPreTraining, NewForMaskedLM) embed with
    # the body; config/remote_code.py reads their configs.
    "nomic_bert": "cenote.models.nomic_bert:NomicBertModel",
    "new": "cenote.models.gte:GteNewModel",
    STATIC_MODEL_TYPE: "cenote.models.static:StaticEmbeddingModel",
}
# Architectures run natively whatever their model_type (llama-nemotron-embed's is its
# own), their checkpoint's remote code never executed.
NATIVE_ARCHITECTURES: dict[str, str] = {
    **{architecture: "cenote.models.decoder:DecoderModel"
       for architecture in BIDIRECTIONAL_DECODERS},
    "Qwen2VLForConditionalGeneration": "cenote.models.qwen2_vl:Qwen2VLEmbedder",
    "Qwen2_5_VLForConditionalGeneration": "cenote.models.qwen2_vl:Qwen2_5_VLEmbedder",
    "Qwen3VLForConditionalGeneration": "cenote.models.qwen2_vl:Qwen3VLEmbedder",
    "ColQwen2ForRetrieval": "cenote.models.colpali:ColQwen2Embedder",
    "ColPaliForRetrieval": "cenote.models.colpali:ColPaliEmbedder",
    "ColQwen3": "cenote.models.colqwen3:ColQwen3Embedder",
    "JinaVLForRanking": "cenote.models.vl_rerankers:JinaVLRanker",
    "LlavaNextForConditionalGeneration": "cenote.models.llava_next:LlavaNextEmbedder",
    "Qwen3VLForSequenceClassification": "cenote.models.vl_rerankers:Qwen3VLReranker",
    "NomicBertModel": "cenote.models.nomic_bert:NomicBertModel",
    "NewModel": "cenote.models.gte:GteNewModel",
    "NewForSequenceClassification": "cenote.models.gte:GteNewModel",
    # jina-embeddings-v5-text-small: a Qwen3 decoder (config/jina_v5.py refuses the rest).
    JINA_V5_ARCHITECTURE: "cenote.models.decoder:DecoderModel",
}


def runs_its_own_code(config: ModelConfig) -> bool:
    """A checkpoint whose architecture is defined by its own code (``auto_map``; not a
    transformers class, e.g. jina-embeddings-v3's ``XLMRobertaLoRA``), loaded with
    ``trust_remote_code``: that code runs, through the transformers fallback, even where
    the ``model_type`` has a native implementation (it may differ from it: rotary
    positions, LoRA adapters, ...)."""
    import transformers

    architecture = config.architecture
    return (config.trust_remote_code and architecture != "AutoModel"
            and bool(getattr(config.hf_config, "auto_map", None))
            and not hasattr(transformers, architecture)
            and architecture not in NATIVE_ARCHITECTURES)


def native_model_class(model_type: str, architecture: str = "") -> type[PoolingModel] | None:
    target = NATIVE_ARCHITECTURES.get(architecture) or NATIVE_MODEL_TYPES.get(model_type)
    if target is None:
        return None
    module_name, _, class_name = target.partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def classifier_activation(config: ModelConfig) -> nn.Module | None:
    """A Sentence-Transformers CrossEncoder's configured activation, if any."""
    path = None
    if is_st_cross_encoder(config.path):  # Sentence-Transformers >= 5 saves it here, and
        # reads it from here before config.json (which may keep an older value).
        path = read_json(config.path / "config_sentence_transformers.json").get("activation_fn")
    st = getattr(config.hf_config, "sentence_transformers", None) or {}
    path = path or (st.get("activation_fn") if isinstance(st, dict) else None)
    path = path or getattr(config.hf_config, "sbert_ce_default_activation_function", None)
    if not path:
        return None
    try:
        return resolve_torch_activation(path)
    except (ValueError, ImportError, AttributeError):
        logger.warning("Ignoring the CrossEncoder activation %r; using the default.", path)
        return None


def load_dense_layers(configs: list[DenseLayerConfig]) -> DenseLayers:
    """The Sentence-Transformers ``Dense`` modules after pooling, with their weights."""
    dense = DenseLayers(configs)
    for linear, cfg in zip(dense.linears, configs, strict=True):
        state = load_state_dict(cfg.path)
        linear.load_state_dict({k.removeprefix("linear."): v for k, v in state.items()},
                               strict=True)
    return dense


@dataclass
class LoadedModel:
    """A model with its weights, its pooler and the policy requests are resolved by."""

    model: PoolingModel
    pooler: Pooler
    policy: PoolingPolicy


def load_model(config: ModelConfig, vocabulary: Vocabulary) -> LoadedModel:
    """Build the model for ``config``, load its weights and heads, and build its pooler.
    ``vocabulary``: the tokenizer's ids, for heads built from LM-head rows and for
    the tokens a lexical head leaves out."""
    classify = config.task == "classify"
    check_jina_embeddings_v5(config.hf_config, config.path)
    cls = (None if runs_its_own_code(config)
           else native_model_class(config.model_type, config.architecture))
    head_from_tokens = classifier_from_token(config.hf_config) if classify else None
    if head_from_tokens is not None and not (cls is not None and cls.builds_head_from_tokens):
        raise ValueError(f"classifier_from_token is not supported for {config.architecture}; "
                         "it applies to the native decoder families (Qwen2, Qwen3, Llama, "
                         "Mistral).")
    if is_dual_encoder(config.hf_config):
        model = dual_encoder(config)
    elif cls is None:
        from cenote.models.fallback import TransformersFallbackModel

        logger.info("No native implementation for %s; using transformers.", config.architecture)
        model = TransformersFallbackModel(config, classify=classify)
    else:
        # A native model builds the heads its task needs (classifier, per-token reward head).
        model = cls(config.hf_config, task=config.task)
        check_token_classifier_head(config, model.token_head is not None)
        if head_from_tokens is not None:
            method, tokens = head_from_tokens
            model.use_head_from_tokens(method, vocabulary.vocab_ids(tokens))
        sparse = config.retrieval.sparse
        if (sparse is not None and sparse.kind == "splade"
                or serves_masked_lm_head(config)) and cls.builds_vocab_head:
            model.use_vocab_head()
        load_native_weights(model, config)
    model = model.to(device=config.device, dtype=config.dtype).eval()
    if config.quantization == "int8":
        if cls is None or "image" in config.modalities:
            raise ValueError(f"quantization='int8' applies to the models cenote runs natively "
                             f"(the BERT family, Qwen2/Qwen3, Llama, Mistral), not "
                             f"{config.architecture}.")
        check_int8_support()  # the engine quantizes after calibrating (engine/quantization)
    else:
        pack_linears(model)
    if model.attention_shape is not None and config.device.type == "cpu":
        native_attention()  # built (or loaded from its cache) now, not on the first request
        native_rowwise()
        shape = model.attention_shape
        # int8 layers that feed attention hand it q/k/v in a dtype of their own
        int8_qkv = config.quantization == "int8" and any(
            isinstance(m, Linear) and m.feeds_attention for m in model.modules())
        dtype = attention_dtype() if int8_qkv else config.dtype
        settle_cpu_attention(shape.num_heads, shape.num_kv_heads, shape.head_dim, dtype,
                             causal=shape.causal)
    weights = load_head_weights(config, model, vocabulary)
    width = (getattr(weights.token_head, "out_features", None)
             if weights.token_head is not None
             else getattr(config.hf_config, "hidden_size", None))
    policy = PoolingPolicy(config, output_width=width)
    pooler = Pooler(policy, weights).to(device=config.device).eval()
    # Heads are tiny next to the body; running them in fp32 keeps low-precision
    # rounding of the body from being amplified into the scores.
    for head in weights.modules():
        head.to(torch.float32)
    return LoadedModel(model, pooler, policy)


def dual_encoder(config: ModelConfig) -> PoolingModel:
    """A dual encoder (CLIP, SigLIP) with its weights: native where its towers are,
    else transformers' own towers."""
    from cenote.models.clip import NativeDualEncoder, supports_natively

    if runs_its_own_code(config) or not supports_natively(config.hf_config):
        from cenote.models.dual_encoder import DualEncoderModel

        logger.info("No native towers for %s; using transformers'.", config.architecture)
        return DualEncoderModel(config)
    model = NativeDualEncoder(config.hf_config, config.max_model_len)
    load_native_weights(model, config)
    return model


def load_native_weights(model: PoolingModel, config: ModelConfig) -> None:
    """The body's weights; a head saved in the same checkpoint (Stanford ColBERT's
    ``linear.weight``) is left to the pooler."""
    late = config.retrieval.late_interaction
    head_prefix = "linear." if late is not None and late.projection == config.path else None
    weights = ((name, tensor) for name, tensor in iter_checkpoint(config.path)
               if head_prefix is None or not name.startswith(head_prefix))
    try:
        model.load_weights(weights)
    except Exception as exc:  # safetensors, pickle and name/shape errors alike
        raise ValueError(f"Could not load the weights in {str(config.path)!r}: {exc}") from exc


def load_head_weights(config: ModelConfig, model: PoolingModel,
                      vocabulary: Vocabulary) -> HeadWeights:
    """Every weight the poolers apply after the body: Sentence-Transformers Dense
    layers, the model's classifier or per-token head, a cross-encoder's activation,
    a late-interaction projection and a sparse head."""
    st = config.st_config
    weights = HeadWeights(
        dense=load_dense_layers(st.dense_layers) if st and st.dense_layers else None,
        classifier=model.classifier,
        token_head=model.token_head,
        score_activation=classifier_activation(config) if config.task == "classify" else None,
    )
    if serves_masked_lm_head(config):
        weights.token_classifier = model.vocab_head  # vLLM's BertForMaskedLM token_classify
    hidden = getattr(config.hf_config, "hidden_size", None)
    late, sparse = config.retrieval.late_interaction, config.retrieval.sparse
    if late is not None:
        weights.drop_first_token = late.drop_first_token
        if late.projection is not None:
            weights.token_projection = load_linear(late.projection, hidden, late.projection_bias)
    if sparse is not None:
        vocab_size = config.hf_config.vocab_size
        if sparse.kind == "lexical":
            weights.token_head = nn.Sequential(load_linear(sparse.head, hidden, True), nn.ReLU())
            hf = config.hf_config  # vLLM's BOSEOSFilter on BGE-M3's token_classify
            weights.token_bounds = (getattr(hf, "bos_token_id", None),
                                    getattr(hf, "eos_token_id", None))
            weights.sparse = SparseHead(sparse, weights.token_head, vocab_size,
                                        vocabulary.boundary_ids())
        elif model.vocab_head is None:
            raise ValueError(f"A SPLADE model needs its masked-LM head: {config.architecture} "
                             "has none here (BERT- and RoBERTa-family *ForMaskedLM "
                             "checkpoints run natively).")
        else:
            weights.sparse = SparseHead(sparse, model.vocab_head, vocab_size)
    return weights


def load_linear(source: Path, in_features: int, bias: bool) -> nn.Linear:
    """A projection saved as ``linear.*`` in a folder's checkpoint (a Sentence-Transformers
    or PyLate Dense folder, a Stanford ColBERT model's own) or as a ``torch.save`` state
    dict (BGE-M3's ``*_linear.pt``)."""
    if source.is_dir():
        state = {k.removeprefix("linear."): v for k, v in iter_checkpoint(source)
                 if k.startswith("linear.") or k in ("weight", "bias")}
    else:
        state = torch.load(source, map_location="cpu", weights_only=True)
    weight = state.get("weight")
    if weight is None or weight.ndim != 2 or weight.shape[1] != in_features:
        raise ValueError(f"{source}: expected a [out, {in_features}] weight, found "
                         f"{None if weight is None else tuple(weight.shape)}.")
    linear = nn.Linear(in_features, weight.shape[0], bias=bias and "bias" in state)
    linear.load_state_dict({k: v for k, v in state.items() if k in ("weight", "bias")
                            and (k == "weight" or linear.bias is not None)})
    return linear
