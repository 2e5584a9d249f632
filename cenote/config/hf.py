"""The Hugging Face config and what is read from it: ``hf_overrides`` (RoPE included),
heads built from LM-head rows, reward-head sizes, positions and the length limit."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cenote.config.hub import read_json

if TYPE_CHECKING:
    from cenote.config.sentence_transformers import SentenceTransformersConfig

logger = logging.getLogger(__name__)

BERT_FAMILY = frozenset({"bert", "roberta", "xlm-roberta", "camembert"})
# Encoders that pool their first token ([CLS]) by default: the BERT family, ModernBERT,
# NomicBert and GTE "new" (config/remote_code.py).
FIRST_TOKEN_ENCODERS = BERT_FAMILY | {"modernbert", "nomic_bert", "new"}
# Dual encoders whose towers transformers runs (get_text_features / get_image_features).
DUAL_ENCODER_ARCHITECTURES = frozenset({"CLIPModel", "SiglipModel", "Siglip2Model",
                                        "AutoModel"})
# RoBERTa-style models number positions from padding_idx + 1.
POSITION_OFFSET_MODEL_TYPES = frozenset({"roberta", "xlm-roberta", "camembert"})


def position_offset(hf_config: Any) -> int:
    """Where a model's first position is numbered: ``pad_token_id + 1`` for RoBERTa-style
    models (1 when the config names no pad token, RoBERTa's own), else 0."""
    if getattr(hf_config, "model_type", "") not in POSITION_OFFSET_MODEL_TYPES:
        return 0
    pad = getattr(hf_config, "pad_token_id", None)
    return (pad if pad is not None else 1) + 1


def is_dual_encoder(hf_config: Any) -> bool:
    """A text tower and a vision tower projected into one space (CLIP, SigLIP)."""
    return (getattr(hf_config, "text_config", None) is not None
            and getattr(hf_config, "vision_config", None) is not None
            and architecture_of(hf_config) in DUAL_ENCODER_ARCHITECTURES)


# Vision-language models embedding text, images and videos in one prompt (SPEC 13).
VISION_LANGUAGE_ARCHITECTURES = frozenset({"Qwen2VLForConditionalGeneration",
                                           "Qwen2_5_VLForConditionalGeneration",
                                           "Qwen3VLForConditionalGeneration"})


def is_vision_language(hf_config: Any) -> bool:
    """A language model reading images and videos through a vision tower (Qwen2-VL)."""
    return architecture_of(hf_config) in VISION_LANGUAGE_ARCHITECTURES


# Visual document retrievers: one vector per token or image patch, scored by MaxSim.
VISUAL_RETRIEVERS = frozenset({"ColQwen2ForRetrieval", "ColPaliForRetrieval", "ColQwen3"})


def is_visual_retriever(hf_config: Any) -> bool:
    """ColQwen2 and ColPali (a ``vlm_config`` backbone), ColQwen3 (colpali-engine's: a
    Qwen3-VL config): token_embed over text and images."""
    return architecture_of(hf_config) in VISUAL_RETRIEVERS


# Vision-language rerankers: a query and a text or image document in one prompt.
VL_RERANKERS = frozenset({"JinaVLForRanking", "Qwen3VLForSequenceClassification"})


def is_vl_reranker(hf_config: Any) -> bool:
    """jina-reranker-m0, Qwen3-VL-Reranker: the Score API over texts and images."""
    return architecture_of(hf_config) in VL_RERANKERS


def is_llava_next(hf_config: Any) -> bool:
    """LLaVA-NeXT converted to an embedder (e5-v): prompts with ``<image>`` placeholders."""
    return architecture_of(hf_config) == "LlavaNextForConditionalGeneration"


def modalities(hf_config: Any) -> tuple[str, ...]:
    """What inputs a model embeds: text; images (dual encoders, ColQwen2, jina-reranker-m0);
    and videos (vision-language embedders)."""
    if is_vision_language(hf_config):
        return ("text", "image", "video")
    if (is_dual_encoder(hf_config) or is_visual_retriever(hf_config)
            or is_vl_reranker(hf_config) or is_llava_next(hf_config)):
        return ("text", "image")
    return ("text",)


def architecture_of(hf_config: Any) -> str:
    archs = getattr(hf_config, "architectures", None) or []
    if archs:
        return archs[0]
    return "AutoModel"


# Decoder architectures vLLM runs with attention both ways whatever their config says
# (their checkpoints ship remote code, which cenote never runs for them).
BIDIRECTIONAL_DECODERS = frozenset({"VoyageQwen3BidirectionalEmbedModel",
                                    "LlamaBidirectionalModel",
                                    "LlamaBidirectionalForSequenceClassification"})
# LlamaBidirectional's config field ``pooling`` -> the sequence pooling type (vLLM's map).
_CONFIG_POOLING = {"avg": "MEAN", "cls": "CLS", "last": "LAST"}


def is_bidirectional(hf_config: Any) -> bool:
    """Whether a decoder attends both ways: ``is_causal: false``, Gemma3's
    ``use_bidirectional_attention``, or an architecture in ``BIDIRECTIONAL_DECODERS``."""
    return (architecture_of(hf_config) in BIDIRECTIONAL_DECODERS
            or getattr(hf_config, "is_causal", True) is False
            or bool(getattr(hf_config, "use_bidirectional_attention", False)))


def config_pooling_type(hf_config: Any) -> str | None:
    """The sequence pooling a LlamaBidirectional config names in ``pooling``; it has no
    default (as in vLLM: a guessed pooling gives wrong embeddings silently)."""
    if not architecture_of(hf_config).startswith("LlamaBidirectional"):
        return None
    pooling = getattr(hf_config, "pooling", None)
    if pooling not in _CONFIG_POOLING:
        raise ValueError(f"A bidirectional Llama needs 'pooling' in its config.json, one of "
                         f"{', '.join(_CONFIG_POOLING)}; found {pooling!r}.")
    return _CONFIG_POOLING[pooling]


# What a rope_scaling override keeps of the model's RoPE: its shape, not its scaling.
_ROPE_STRUCTURE_KEYS = ("rope_theta", "partial_rotary_factor", "mrope_section",
                        "mrope_interleaved")


def apply_hf_overrides(hf_config: Any, overrides: dict[str, Any]) -> None:
    """Set ``overrides`` on the HF config, as vLLM's ``hf_overrides`` do.

    RoPE needs more than ``setattr`` on transformers 5, which keeps it all in
    ``rope_parameters`` (theta included): there ``rope_scaling`` (vLLM's documented
    way to switch on YaRN or linear scaling) would replace the parameters and lose
    the theta, and a top-level ``rope_theta`` would never be read. Both are merged
    into ``rope_parameters`` instead, as transformers reads them from a config.json,
    and validated by transformers.
    """
    rope = {k: overrides[k] for k in ("rope_scaling", "rope_theta") if k in overrides}
    if not hasattr(hf_config, "standardize_rope_params"):
        rope = {}  # transformers 4 reads both attributes as they are
    for key, value in overrides.items():
        if key not in rope:
            setattr(hf_config, key, value)
    if not rope:
        return
    current = dict(getattr(hf_config, "rope_parameters", None) or {})
    if hf_config.nested_rope_parameter_keys(current):
        raise ValueError("This model has RoPE parameters per layer type; override "
                         "rope_parameters as a whole instead of rope_scaling/rope_theta.")
    params = current
    if "rope_scaling" in rope:
        scaling = rope["rope_scaling"]
        if scaling is not None and not isinstance(scaling, dict):
            raise ValueError(f"hf_overrides rope_scaling must be a dict or null, not "
                             f"{scaling!r}.")
        scaling = dict(scaling or {})
        if "type" in scaling and "rope_type" not in scaling:  # the 4.x spelling
            scaling["rope_type"] = scaling.pop("type")
        params = {k: current[k] for k in _ROPE_STRUCTURE_KEYS if k in current}
        params.update({"rope_type": "default", **scaling})
    if "rope_theta" in rope:
        params["rope_theta"] = rope["rope_theta"]
    if params.get("rope_theta") is None:
        params["rope_theta"] = getattr(hf_config, "default_theta", 10000.0)
    factor = params.get("factor")
    if factor is not None and (isinstance(factor, bool) or not isinstance(factor, (int, float))):
        raise ValueError(f"hf_overrides RoPE factor must be a number, not {factor!r}.")
    hf_config.rope_parameters = params
    hf_config.standardize_rope_params()
    try:
        hf_config.validate_rope()
    except (KeyError, ValueError) as exc:
        raise ValueError(f"hf_overrides RoPE parameters {params}: {exc}") from exc


# vLLM's ways to turn a causal LM into a classifier from its LM head's rows for a few
# tokens (hf_overrides "method" and "classifier_from_token"): the difference of two
# rows as one logit (Qwen3-Reranker's "yes" vs "no"), or the rows as they are.
CLASSIFIER_FROM_TOKEN_METHODS = ("from_2_way_softmax", "no_post_processing")


def classifier_from_token(hf_config: Any) -> tuple[str, list[str]] | None:
    """``(method, tokens)`` when the head is built from LM-head rows, else None.
    ``is_original_qwen3_reranker`` means ``from_2_way_softmax``, as in vLLM."""
    method = getattr(hf_config, "method", None)
    tokens = getattr(hf_config, "classifier_from_token", None)
    if getattr(hf_config, "is_original_qwen3_reranker", False):
        method = "from_2_way_softmax"
    # "method" is a common word: another meaning of it, with no tokens, is not ours.
    if method is None or (tokens is None and method not in CLASSIFIER_FROM_TOKEN_METHODS):
        return None
    return method, list(tokens or [])


def check_classifier_from_token(hf_config: Any) -> None:
    """Validate a head built from LM-head rows and set the labels it gives: one logit
    for ``from_2_way_softmax`` (so sigmoid, as vLLM scores), one per token otherwise."""
    spec = classifier_from_token(hf_config)
    if spec is None:
        return
    method, tokens = spec
    if method not in CLASSIFIER_FROM_TOKEN_METHODS:
        raise ValueError(f"method {method!r} is not supported; choose one of "
                         f"{', '.join(CLASSIFIER_FROM_TOKEN_METHODS)}.")
    if not tokens or not all(isinstance(t, str) and t for t in tokens):
        raise ValueError(f"method {method!r} needs classifier_from_token, a list of tokens "
                         '(e.g. ["no", "yes"]).')
    if method == "from_2_way_softmax" and len(tokens) != 2:
        raise ValueError(f"from_2_way_softmax needs two classifier_from_token entries "
                         f"(the false and the true token), not {tokens!r}.")
    hf_config.method = method
    hf_config.num_labels = 1 if method == "from_2_way_softmax" else len(tokens)


def rope_settings(hf_config: Any) -> tuple[str, dict[str, Any]]:
    """``(rope_type, parameters)`` of a model's RoPE. transformers 5 keeps everything in
    ``rope_parameters``; 4.x used ``rope_scaling`` (with ``type`` as an older spelling
    of ``rope_type``) beside ``rope_theta``."""
    params = (getattr(hf_config, "rope_parameters", None)
              or getattr(hf_config, "rope_scaling", None) or {})
    return params.get("rope_type", params.get("type", "default")), params


def set_reward_head_labels(hf_config: Any, path: Path, overrides: dict[str, Any]) -> None:
    """The outputs of a ``*ForRewardModel`` (1) or ``*ForProcessRewardModel`` (2: the
    step is bad or good) head, as vLLM sets them, where neither ``config.json`` nor
    the overrides name them (upstream code hard-codes them; transformers would
    default to 2)."""
    architecture = architecture_of(hf_config)
    labels = (2 if architecture.endswith("ForProcessRewardModel")
              else 1 if architecture.endswith("ForRewardModel") else None)
    if architecture == "JinaVLForRanking":  # one score, whatever the config says (vLLM)
        hf_config.num_labels = 1
        return
    named = {**read_json(path / "config.json"), **overrides}
    if labels is not None and "num_labels" not in named and "id2label" not in named:
        hf_config.num_labels = labels


def _rope_scaled_positions(hf_config: Any, positions: int) -> int:
    """The length a scaled RoPE reaches, as vLLM derives it: linear scaling multiplies
    the positions by ``factor``, YaRN its original length. llama3 and longrope configs
    already state the scaled length; dynamic NTK stays at the configured length
    (transformers recomputes its frequencies past it, and cenote does not)."""
    rope_type, params = rope_settings(hf_config)
    factor = params.get("factor")
    if rope_type not in ("linear", "yarn") or not isinstance(factor, (int, float)):
        return positions
    if rope_type == "yarn":
        positions = params.get("original_max_position_embeddings") or positions
    return int(positions * factor)


_DEFAULT_MAX_MODEL_LEN = 2048


_LENGTH_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length",
                "max_sequence_length", "max_seq_length", "seq_len")


def derive_max_model_len(
    hf_config: Any, st_config: SentenceTransformersConfig | None, user_value: int | None
) -> int:
    """The model's limit (the smaller of its positions and ST's max_seq_length), or the
    user's value when it is within that limit; beyond it is an error, as in vLLM."""
    limits: list[tuple[int, str]] = []
    # The first of the names architectures give their length limit (as vLLM reads them).
    key = next((k for k in _LENGTH_KEYS if isinstance(getattr(hf_config, k, None), int)
                and getattr(hf_config, k) > 0), None)
    text_config = getattr(hf_config, "text_config", None)
    if key is None and text_config is None and is_visual_retriever(hf_config):
        text_config = hf_config.vlm_config.text_config  # ColPali / ColQwen2: the VLM's
    if key is None and text_config is not None:  # a dual encoder: its text tower's limit
        return derive_max_model_len(text_config, st_config, user_value)
    if key is not None:
        positions = getattr(hf_config, key) - position_offset(hf_config)
        positions = _rope_scaled_positions(hf_config, positions)
        limits.append((int(positions), f"its {key}"))
    if st_config is not None and st_config.max_seq_length:
        limits.append((int(st_config.max_seq_length),
                       "its Sentence-Transformers max_seq_length"))
    if user_value is not None and user_value < 1:
        raise ValueError(f"max_model_len must be positive, got {user_value}.")
    if not limits:  # e.g. T5's relative positions: vLLM's default, unless given
        if user_value is None:
            logger.warning("The model's config names no maximum length; using %d tokens "
                           "(pass max_model_len to change it).", _DEFAULT_MAX_MODEL_LEN)
        return int(user_value or _DEFAULT_MAX_MODEL_LEN)
    limit, source = min(limits)
    if user_value is None:
        return limit
    if user_value > limit:
        raise ValueError(f"max_model_len ({user_value}) is greater than the model's maximum "
                         f"length ({limit}, from {source}); use at most {limit}.")
    return int(user_value)
