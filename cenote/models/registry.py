"""Which implementation runs which architecture, and building a loaded model."""

from __future__ import annotations

import importlib
import logging

import torch
from torch import nn

from cenote.config import (
    BERT_FAMILY,
    ModelConfig,
    classifier_from_token,
    is_st_cross_encoder,
    read_json,
)
from cenote.models.kernels import native_attention, native_rowwise
from cenote.models.layers import pack_linears, settle_cpu_attention
from cenote.models.loading import iter_checkpoint
from cenote.pooling import Pooler

logger = logging.getLogger(__name__)

# model_type -> "module:Class" of a native implementation.
NATIVE_MODEL_TYPES: dict[str, str] = {
    **{model_type: "cenote.models.bert:BertFamilyModel" for model_type in BERT_FAMILY},
    **{model_type: "cenote.models.decoder:DecoderModel"
       for model_type in ("qwen2", "qwen3", "llama", "mistral")},
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
            and not hasattr(transformers, architecture))


def native_model_class(model_type: str) -> type[nn.Module] | None:
    target = NATIVE_MODEL_TYPES.get(model_type)
    if target is None:
        return None
    module_name, _, class_name = target.partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def classifier_activation(config: ModelConfig) -> nn.Module | None:
    """A Sentence-Transformers CrossEncoder's configured activation, if any."""
    from cenote.pooling import _resolve_torch_activation

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
        return _resolve_torch_activation(path)
    except (ValueError, ImportError, AttributeError):
        logger.warning("Ignoring the CrossEncoder activation %r; using the default.", path)
        return None


def token_ids_of(config: ModelConfig, tokens: list[str]) -> list[int]:
    """The vocabulary ids of ``tokens`` (each must be one token of the model's tokenizer)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(config.tokenizer_path or config.path,
                                              trust_remote_code=config.trust_remote_code)
    vocab = tokenizer.get_vocab()
    unknown = [t for t in tokens if t not in vocab]
    if unknown:
        raise ValueError(f"classifier_from_token {unknown!r} {'is' if len(unknown) == 1 else 'are'}"
                         " not in the tokenizer's vocabulary; give tokens as the tokenizer "
                         "spells them.")
    return [vocab[t] for t in tokens]


def load_model(config: ModelConfig) -> tuple[nn.Module, Pooler]:
    """Build the model for ``config``, load its weights, and build its pooler."""
    classify = config.task == "classify"
    cls = None if runs_its_own_code(config) else native_model_class(config.model_type)
    head_from_tokens = classifier_from_token(config.hf_config) if classify else None
    if head_from_tokens is not None and not hasattr(cls, "use_head_from_tokens"):
        raise ValueError(f"classifier_from_token is not supported for {config.architecture}; "
                         "it applies to the native decoder families (Qwen2, Qwen3, Llama, "
                         "Mistral).")
    if cls is None:
        from cenote.models.fallback import TransformersFallbackModel

        logger.info("No native implementation for %s; using transformers.", config.architecture)
        model = TransformersFallbackModel(config, classify=classify)
    else:
        # A native model builds the heads its task needs (classifier, per-token reward head).
        model = cls(config.hf_config, task=config.task)
        if head_from_tokens is not None:
            method, tokens = head_from_tokens
            model.use_head_from_tokens(method, token_ids_of(config, tokens))
        try:
            model.load_weights(iter_checkpoint(config.path))
        except Exception as exc:  # safetensors, pickle and name/shape errors alike
            raise ValueError(f"Could not load the weights in {str(config.path)!r}: {exc}") from exc
    model = model.to(device=config.device, dtype=config.dtype).eval()
    pack_linears(model)
    if cls is not None and config.device.type == "cpu":
        native_attention()  # built (or loaded from its cache) now, not on the first request
        native_rowwise()
        settle_cpu_attention(*model.attention_shape[:3], config.dtype,
                             causal=model.attention_shape[3])
    pooler = Pooler(
        config,
        classifier=getattr(model, "classifier", None),
        token_head=getattr(model, "token_head", None),
        classifier_activation=classifier_activation(config) if classify else None,
    )
    pooler = pooler.to(device=config.device).eval()
    # Heads are tiny next to the body; running them in fp32 keeps low-precision
    # rounding of the body from being amplified into the scores.
    for head in (pooler.dense, pooler.classifier, pooler.token_head):
        if head is not None:
            head.to(torch.float32)
    return model, pooler
