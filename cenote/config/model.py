"""A model as loaded: everything decided once, before its weights are read (where its
files are, which task it serves, its dtype, device and maximum length)."""

from __future__ import annotations

import functools
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cenote.compat.vllm import DTYPE_ALIASES, check_architecture_override
from cenote.config.hf import (
    FIRST_TOKEN_ENCODERS,
    apply_hf_overrides,
    architecture_of,
    check_classifier_from_token,
    classifier_from_token,
    derive_max_model_len,
    is_bidirectional,
    is_dual_encoder,
    modalities,
    set_reward_head_labels,
)
from cenote.config.hub import ModelNotFoundError, resolve_model_path, transformer_folder
from cenote.config.pooler import (
    PoolerConfig,
    TaskPooler,
    check_pooler_config,
    task_pooler,
)
from cenote.config.remote_code import read_remote_code_config
from cenote.config.retrieval import RetrievalConfig, read_retrieval_config
from cenote.config.sentence_transformers import (
    SentenceTransformersConfig,
    read_sentence_transformers_config,
)
from cenote.config.static import (
    STATIC_MODEL_TYPE,
    check_static_options,
    read_static_embedding_config,
    static_pooling,
)
from cenote.config.token_classification import has_token_classify_head, is_token_classifier
from cenote.machine import cpu_has_native_bf16
from cenote.tasks import MODEL_TASKS, supported_pooling_tasks

logger = logging.getLogger(__name__)

DEFAULT_MAX_NUM_BATCHED_TOKENS = 8192
# fp32 and int8 batches on CPU: 4096 tokens ran all-MiniLM-L6-v2 8 % (fp32) and 10 %
# (int8) faster than 8192 on an AVX2 EPYC, whose 512 KB L2 then holds more of a layer's
# activations (benchmarks/README.md, "Batch budget"); bf16 measured alike over 512-16384.
CPU_FP32_MAX_NUM_BATCHED_TOKENS = 4096
# A static model's batch is a table lookup: its cost is per batch, not per token (16384
# tokens ran the steps after tokenising ~25 % faster than 4096; benchmarks/README.md).
STATIC_MAX_NUM_BATCHED_TOKENS = 16384


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} was asked for, but CUDA is not available.")
    if dev.type not in {"cpu", "cuda"}:
        raise ValueError(f"Unsupported device {str(device)!r}; use auto, cpu or cuda[:N].")
    return dev


def resolve_dtype(dtype: str | torch.dtype, device: torch.device, hf_config: Any) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype != "auto":
        if dtype not in _DTYPES:
            raise ValueError(
                f"Unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16."
            )
        return _DTYPES[dtype]
    if device.type == "cuda":
        saved = getattr(hf_config, "dtype", None) or getattr(hf_config, "torch_dtype", None)
        if isinstance(saved, str):
            saved = _DTYPES.get(saved)
        return saved if saved in (torch.float16, torch.bfloat16) else torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


def resolve_task(task: str, architecture: str, has_st_config: bool, is_cross_encoder: bool,
                 pooling_runner: bool = False) -> str:
    """Map ``--task`` (or ``auto``) to one of embed, classify, reward. ``pooling_runner``
    (vLLM's ``runner="pooling"``): a generative checkpoint becomes an embedder, as there."""
    if task not in MODEL_TASKS:
        raise ValueError(f"Unknown task {task!r}; choose one of {', '.join(MODEL_TASKS)}.")
    if task == "score":
        return "classify" if is_cross_encoder else "embed"
    if task != "auto":
        return task
    if has_st_config:
        return "embed"
    if architecture.endswith(("ForSequenceClassification", "ForRanking")):
        return "classify"
    if architecture.endswith("RewardModel") or is_token_classifier(architecture):
        return "reward"
    if architecture.endswith("ForCausalLM") or architecture.endswith("LMHeadModel"):
        if pooling_runner:
            return "embed"
        raise ValueError(
            f"{architecture} is a generative model; pass task='embed', 'classify' or 'reward' "
            "(--task on the command line) to convert it into a pooling model."
        )
    return "embed"


def check_quantization(quantization: str | None, device: torch.device,
                       dtype: str | torch.dtype) -> str | None:
    """``"int8"`` or None (vLLM's ``None``/``"none"``); ValueError for what cenote
    does not do."""
    if quantization is None or str(quantization).lower() in ("none", ""):
        return None
    if quantization != "int8":
        raise ValueError(f"quantization={quantization!r}: cenote's one quantization is "
                         "'int8' (int8 matmuls on CPUs, opt-in).")
    if device.type != "cpu":
        raise ValueError("quantization='int8' runs on CPUs; on a GPU use a half dtype.")
    if dtype not in ("auto", "float32", torch.float32):
        raise ValueError(f"quantization='int8' runs the layers around its matmuls in "
                         f"float32; dtype={dtype!r} does not apply with it.")
    return "int8"


@dataclass
class ModelConfig:
    """Everything decided about a model before its weights are loaded."""

    model: str
    path: Path
    hf_config: Any
    architecture: str
    task: str
    dtype: torch.dtype
    device: torch.device
    max_model_len: int
    max_num_batched_tokens: int
    st_config: SentenceTransformersConfig | None
    override_pooler_config: PoolerConfig | None
    trust_remote_code: bool = False
    # The name messages give the model: the server's first --served-model-name.
    served_model_name: str | None = None
    # Where the tokenizer is read from, when not from the model's folder (vLLM's tokenizer=).
    tokenizer_path: Path | None = None
    # Late-interaction and sparse outputs the folder declares (embedding models).
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    # "int8": opt-in int8 matmuls (cenote.models.quantization); None: the dtype throughout.
    quantization: str | None = None
    # --auto-truncate (TEI's): inputs over max_model_len are cut to it, keeping their
    # start, unless a request says how to cut; off (refused), as in vLLM, by default.
    auto_truncate: bool = False
    # A prefix that several sequences of a batch share runs once on causal decoders
    # (models/prefix_sharing.py); vLLM's --no-enable-prefix-caching turns it off.
    enable_prefix_caching: bool = True

    @classmethod
    def from_args(
        cls,
        model: str | os.PathLike | None = None,
        task: str = "auto",
        dtype: str | torch.dtype = "auto",
        max_model_len: int | None = None,
        device: str = "auto",
        override_pooler_config: PoolerConfig | dict | str | None = None,
        hf_overrides: dict[str, Any] | None = None,
        max_num_batched_tokens: int | None = None,
        trust_remote_code: bool = False,
        revision: str | None = None,
        tokenizer: str | os.PathLike | None = None,
        runner: str = "auto",
        quantization: str | None = None,
        auto_truncate: bool = False,
        enable_prefix_caching: bool = True,
    ) -> ModelConfig:
        from transformers import AutoConfig

        root = resolve_model_path(model, revision)
        path = transformer_folder(root)  # a Sentence-Transformers CLIP folder: its model
        tokenizer_path = (resolve_model_path(tokenizer, tokenizer_only=True)
                          if tokenizer is not None else None)
        name = str(model) if model is not None else "sentence-transformers/all-MiniLM-L6-v2"
        try:
            # A static model (model2vec, StaticEmbedding) has no HF config: its own stands in.
            hf_config = (read_static_embedding_config(root, path)
                         or read_remote_code_config(path)  # NomicBert's, GTE's: not run
                         or AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code))
        except Exception as exc:
            raise ModelNotFoundError(
                f"Could not read the model config in {str(path)!r}: {exc}"
            ) from exc
        if isinstance(hf_overrides, str):  # JSON, as --hf-overrides takes it
            hf_overrides = json.loads(hf_overrides)
        if hf_overrides is not None and not isinstance(hf_overrides, dict):
            raise ValueError(f"hf_overrides must be a dict (or its JSON), not "
                             f"{type(hf_overrides).__name__}.")
        check_architecture_override(hf_overrides or {}, hf_config, trust_remote_code)
        apply_hf_overrides(hf_config, hf_overrides or {})
        check_classifier_from_token(hf_config)
        set_reward_head_labels(hf_config, path, hf_overrides or {})
        dims = getattr(hf_config, "matryoshka_dimensions", None)
        if dims is not None and (not isinstance(dims, (list, tuple)) or not all(
                isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims)):
            raise ValueError(f"matryoshka_dimensions must be a list of positive integers, "
                             f"not {dims!r}.")
        architecture = architecture_of(hf_config)
        st_config = read_sentence_transformers_config(root)
        static = hf_config.model_type == STATIC_MODEL_TYPE
        if static:
            st_config = static_pooling(hf_config, st_config)
            check_static_options(task, quantization)
        is_cross_encoder = architecture.endswith("ForSequenceClassification")
        resolved_task = resolve_task(task, architecture, st_config is not None, is_cross_encoder,
                                     pooling_runner=runner == "pooling")
        dev = resolve_device(device)
        dtype = DTYPE_ALIASES.get(dtype, dtype) if isinstance(dtype, str) else dtype
        quantization = check_quantization(quantization, dev, dtype)
        # int8 matmuls take fp32 activations: the layers around them run in fp32 too.
        # A static model's mean is computed in fp32 as its library does, unless asked.
        resolved_dtype = (torch.float32 if quantization is not None or (static and dtype == "auto")
                          else resolve_dtype(dtype, dev, hf_config))
        limit = (hf_config.max_model_len(max_model_len) if static
                 else derive_max_model_len(hf_config, st_config, max_model_len))
        default_budget = (STATIC_MAX_NUM_BATCHED_TOKENS if static
                          else CPU_FP32_MAX_NUM_BATCHED_TOKENS
                          if dev.type == "cpu" and resolved_dtype == torch.float32
                          else DEFAULT_MAX_NUM_BATCHED_TOKENS)
        budget = max_num_batched_tokens or max(default_budget, limit)
        if budget < limit:  # vLLM would prefill in chunks; cenote runs a prompt whole
            logger.warning("max_num_batched_tokens (%d) is smaller than max_model_len (%d); "
                           "batches take up to %d tokens, so the longest prompt fits one.",
                           budget, limit, limit)
            budget = limit
        retrieval = (read_retrieval_config(root, architecture) if resolved_task == "embed"
                     else RetrievalConfig())
        pooler_config = PoolerConfig.coerce(override_pooler_config)
        if auto_truncate and pooler_config is not None and pooler_config.enable_chunked_processing:
            raise ValueError("auto_truncate cuts every long input, so chunked processing "
                             "(enable_chunked_processing) would never run: use one or the "
                             "other.")
        chunked = pooler_config is not None and bool(pooler_config.enable_chunked_processing)
        if static and hf_config.truncation_length and not chunked:
            auto_truncate = True  # its library cuts long texts to its length, keeping the start
        config = cls(
            model=name,
            path=path,
            hf_config=hf_config,
            architecture=architecture,
            task=resolved_task,
            dtype=resolved_dtype,
            device=dev,
            max_model_len=limit,
            max_num_batched_tokens=budget,
            st_config=st_config,
            override_pooler_config=pooler_config,
            trust_remote_code=trust_remote_code,
            tokenizer_path=tokenizer_path,
            retrieval=retrieval,
            quantization=quantization,
            auto_truncate=auto_truncate,
            enable_prefix_caching=enable_prefix_caching,
        )
        check_pooler_config(pooler_config, resolved_task, config.supported_pooling_tasks)
        return config

    @property
    def display_name(self) -> str:
        return self.served_model_name or self.model

    @property
    def model_type(self) -> str:
        return getattr(self.hf_config, "model_type", "")

    @property
    def is_static(self) -> bool:
        """A static embedding model (model2vec, Sentence-Transformers StaticEmbedding)."""
        return self.model_type == STATIC_MODEL_TYPE

    @property
    def is_bert_family(self) -> bool:
        """An encoder that attends both ways and pools its first token ([CLS]) by
        default: the BERT family, and ModernBERT."""
        return self.model_type in FIRST_TOKEN_ENCODERS

    @functools.cached_property
    def pairs_as_one_text(self) -> bool:
        """Score pairs are tokenised as one text, query then document, instead of as a
        text pair: vLLM's ``use_pad_token: false``, the default for classifiers built
        from LM-head rows ("LLM as reranker")."""
        use_pad_token = getattr(self.hf_config, "use_pad_token", None)
        if use_pad_token is None:
            use_pad_token = classifier_from_token(self.hf_config) is None
        return not use_pad_token

    @property
    def num_labels(self) -> int:
        return int(getattr(self.hf_config, "num_labels", 0) or 0)

    @property
    def id2label(self) -> dict[int, str]:
        raw = getattr(self.hf_config, "id2label", None) or {}
        return {int(k): str(v) for k, v in raw.items()}

    @property
    def matryoshka_dimensions(self) -> list[int] | None:
        dims = getattr(self.hf_config, "matryoshka_dimensions", None)
        return list(dims) if dims else None

    @property
    def is_matryoshka(self) -> bool:
        return bool(getattr(self.hf_config, "is_matryoshka", False)) or bool(
            self.matryoshka_dimensions
        )

    @property
    def supported_pooling_tasks(self) -> tuple[str, ...]:
        retrieval = self.retrieval
        return supported_pooling_tasks(
            self.task, self.num_labels, dense=retrieval.dense,
            multi_vector=retrieval.late_interaction is not None,
            sparse=retrieval.sparse.kind if retrieval.sparse else None,
            token_head=has_token_classify_head(self))

    def task_pooler(self, pooling_task: str) -> TaskPooler:
        """The default pooler of ``pooling_task`` with every config layer applied."""
        return task_pooler(self, pooling_task)

    @property
    def default_pooling_task(self) -> str | None:
        """The pooling task ``PoolerConfig(task=...)`` made the default (of ``/pooling``
        without a task, ``LLM.encode(pooling_task=None)``), None where none was set."""
        override = self.override_pooler_config
        return override.task if override is not None else None

    # vLLM's ModelConfig attributes that code written for it reads.

    @property
    def pooler_config(self) -> PoolerConfig:
        """The pooler configuration as given (empty where none was)."""
        return self.override_pooler_config or PoolerConfig()

    @property
    def architectures(self) -> list[str]:
        return list(getattr(self.hf_config, "architectures", None) or [self.architecture])

    @property
    def embedding_size(self) -> int | None:
        """The width of an embed vector: the last Sentence-Transformers Dense layer's, a
        dual encoder's projection, else the hidden size."""
        st = self.st_config
        if st is not None and st.dense_layers:
            return st.dense_layers[-1].out_features
        if is_dual_encoder(self.hf_config):  # SigLIP: no projection, the text tower's width
            return (getattr(self.hf_config, "projection_dim", None)
                    or self.hf_config.text_config.hidden_size)
        return getattr(self.hf_config, "hidden_size", None)

    @property
    def head_dtype(self) -> torch.dtype:
        """Heads run in float32 whatever the body's dtype (as vLLM's pooling models)."""
        return torch.float32

    @property
    def is_cross_encoder(self) -> bool:
        return self.task == "classify"

    @property
    def attn_type(self) -> str:
        """vLLM's name for how the model attends: both ways (encoders), or causally."""
        both_ways = self.is_bert_family or is_bidirectional(self.hf_config)
        return "encoder_only" if both_ways else "decoder"

    @property
    def chunked_processing(self) -> bool:
        """Whether embed runs inputs longer than ``max_model_len`` in chunks."""
        override = self.override_pooler_config
        return bool(override and override.enable_chunked_processing)

    @property
    def max_embed_len(self) -> int | None:
        """With chunked processing, the longest input embed takes (None: no limit)."""
        return self.override_pooler_config.max_embed_len if self.chunked_processing else None

    @property
    def modalities(self) -> tuple[str, ...]:
        """What inputs the model embeds (text; images; videos): see ``hf.modalities``."""
        return modalities(self.hf_config)
