"""The pooler's configuration: pooling types, ``override_pooler_config``, and the
default pooler of each pooling task with every configuration layer applied (model
default < Sentence-Transformers config < ``override_pooler_config``)."""

from __future__ import annotations

import enum
import json
import logging
import math
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from cenote.config.hf import config_pooling_type
from cenote.config.token_classification import softmax_by_default
from cenote.exceptions import VLLMValidationError
from cenote.params import PoolingParams, one_activation
from cenote.tasks import OWN_POOLING_TASK, pooling_task

if TYPE_CHECKING:
    from cenote.config.model import ModelConfig

logger = logging.getLogger(__name__)


class PoolingType(str, enum.Enum):
    LAST = "LAST"
    ALL = "ALL"
    CLS = "CLS"
    MEAN = "MEAN"
    STEP = "STEP"


# vLLM 0.34's split of the pooling types: one vector per input (the sequence tasks:
# embed, classify, score) or rows per token (the token tasks: encode's ALL or STEP).
SEQ_POOLING_TYPES = ("CLS", "LAST", "MEAN")
TOK_POOLING_TYPES = ("ALL", "STEP")
# The pooling tasks a pooler configuration's ``task`` may not name, and why (vLLM's words).
_REMOVED_TASKS = {"score": "`score` task was removed; use `classify` instead."}


@dataclass
class PoolerConfig:
    """Overrides of a model's default pooler (``--pooler-config``, vLLM's
    ``PoolerConfig``; ``--override-pooler-config`` is its older name).

    ``task``: the model's default pooling task (``/pooling`` without a task,
    ``LLM.encode(pooling_task=None)``; ``token_embed`` also makes ``LLM.embed`` return
    token vectors, as vLLM). ``seq_pooling_type`` (CLS, LAST, MEAN) pools the sequence
    tasks, ``tok_pooling_type`` (ALL, STEP) the encode task; ``pooling_type`` sets the
    one its value belongs to. ``normalize`` is a cenote extension (vLLM 0.34 reads
    ``use_activation`` for it). ``logit_mean``/``logit_sigma`` calibrate a classifier:
    ``activation((logit - logit_mean) / logit_sigma)``.
    """

    task: str | None = None
    pooling_type: str | None = None
    seq_pooling_type: str | None = None
    tok_pooling_type: str | None = None
    normalize: bool | None = None
    dimensions: int | None = None
    activation: bool | None = None
    softmax: bool | None = None
    step_tag_id: int | None = None
    returned_token_ids: list[int] | None = None
    use_activation: bool | None = None  # vLLM's current name for ``activation``
    # vLLM's long-input options: inputs over max_model_len run in chunks whose poolings
    # are averaged (weighted by their tokens); inputs over max_embed_len are refused.
    enable_chunked_processing: bool | None = None
    max_embed_len: int | None = None
    logit_mean: float | None = None
    logit_sigma: float | None = None
    # vLLM's older calibration (logits - logit_bias, times logit_scale): read as
    # logit_mean = logit_bias and logit_sigma = 1 / logit_scale.
    logit_bias: float | None = None
    logit_scale: float | None = None
    # vLLM's switch for its fused MaxSim kernel: a kernel choice, accepted and ignored.
    enable_flash_late_interaction: bool | None = None

    def __post_init__(self) -> None:
        for name in ("normalize", "activation", "softmax", "use_activation",
                     "enable_chunked_processing", "enable_flash_late_interaction"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), bool):
                raise ValueError(f"override_pooler_config {name} must be true or false, "
                                 f"not {getattr(self, name)!r}.")
        for name in ("dimensions", "step_tag_id", "max_embed_len"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise ValueError(f"override_pooler_config {name} must be an integer, "
                                 f"not {value!r}.")
        ids = self.returned_token_ids
        if ids is not None and (not isinstance(ids, list) or not all(
                isinstance(i, int) and not isinstance(i, bool) for i in ids)):
            raise ValueError("override_pooler_config returned_token_ids must be a list of "
                             f"integers, not {ids!r}.")
        self._resolve_task()
        self._resolve_pooling_types()
        self._resolve_calibration()
        self.activation = one_activation(activation=self.activation, softmax=self.softmax,
                                         use_activation=self.use_activation)
        self.softmax = self.use_activation = None

    def _resolve_task(self) -> None:
        if self.task is None:
            return
        if self.task in _REMOVED_TASKS:
            raise VLLMValidationError(_REMOVED_TASKS[self.task], parameter="task",
                                      value=self.task)
        pooling_task(self.task)  # ValueError naming the tasks for an unknown one

    def _resolve_pooling_types(self) -> None:
        """``pooling_type`` into the field its value belongs to, as vLLM; both set is
        an error."""
        for name, allowed in (("pooling_type", SEQ_POOLING_TYPES + TOK_POOLING_TYPES),
                              ("seq_pooling_type", SEQ_POOLING_TYPES),
                              ("tok_pooling_type", TOK_POOLING_TYPES)):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, str) or value.upper() not in allowed:
                raise ValueError(f"Unknown {name} {value!r}; choose one of "
                                 f"{', '.join(allowed)}.")
            setattr(self, name, value.upper())
        if self.pooling_type is None:
            return
        for kind in ("seq", "tok"):
            if getattr(self, f"{kind}_pooling_type") is not None:
                raise ValueError(f"Cannot set both `pooling_type` and `{kind}_pooling_type`.")
        kind = "seq" if self.pooling_type in SEQ_POOLING_TYPES else "tok"
        setattr(self, f"{kind}_pooling_type", self.pooling_type)
        self.pooling_type = None

    def _resolve_calibration(self) -> None:
        for name in ("logit_mean", "logit_sigma", "logit_bias", "logit_scale"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(
                    value, (int, float)) or not math.isfinite(value)):
                raise ValueError(f"override_pooler_config {name} must be a finite number, "
                                 f"not {value!r}.")
        for old, new in (("logit_bias", "logit_mean"), ("logit_scale", "logit_sigma")):
            value = getattr(self, old)
            if value is None:
                continue
            if getattr(self, new) is not None:
                raise ValueError(f"Give {new} or its deprecated form {old}, not both.")
            if old == "logit_scale":
                if value == 0:
                    raise ValueError("logit_scale cannot be 0 (it would be logit_sigma = "
                                     "1 / 0).")
                value = 1 / value
            logger.warning("PoolerConfig %s is deprecated (vLLM 0.34 removed it); read as "
                           "%s = %s.", old, new, value)
            setattr(self, new, float(value))
            setattr(self, old, None)
        if self.logit_sigma is not None and self.logit_sigma == 0:
            raise ValueError("logit_sigma cannot be 0 (division by zero)")

    @property
    def calibrates_logits(self) -> bool:
        return self.logit_mean is not None or self.logit_sigma is not None

    @classmethod
    def coerce(cls, value: PoolerConfig | dict | str | None) -> PoolerConfig | None:
        if value is None or isinstance(value, PoolerConfig):
            return value
        if isinstance(value, str):
            value = json.loads(value)
        if not isinstance(value, dict):
            raise ValueError("override_pooler_config must be a PoolerConfig, a dict or JSON.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"Unknown override_pooler_config field(s): {', '.join(unknown)}.")
        return cls(**value)


@dataclass
class TaskPooler:
    """The resolved default pooler of one pooling task."""

    pooling_type: PoolingType
    defaults: PoolingParams


def configured_pooling_task(pooler_config: PoolerConfig | None, model_task: str) -> str:
    """The pooling task a pooler configuration's parameters (``normalize``,
    ``use_activation``, ``dimensions``, ...) apply to: its ``task``, else the one the
    model is loaded for."""
    if pooler_config is not None and pooler_config.task is not None:
        return pooler_config.task
    return OWN_POOLING_TASK[model_task]


def task_pooler(config: ModelConfig, task_name: str) -> TaskPooler:
    """The default pooler of pooling task ``task_name`` for the model of ``config``."""
    if task_name == "score":  # a cross-encoder's classifier, else the embedding's cosine
        task_name = "classify" if config.task == "classify" else "embed"
    defaults = PoolingParams(**pooling_task(task_name).defaults)
    one_row = pooling_task(task_name).one_row
    # BERT-family encoders pool their first token ([CLS]), decoders their last, unless
    # the config names its pooling (a bidirectional Llama's).
    named = config_pooling_type(config.hf_config)
    pooling_type = (PoolingType(named) if named is not None
                    else PoolingType.CLS if config.is_bert_family else PoolingType.LAST)
    if not one_row:  # encode and the token-level tasks: every row
        pooling_type = PoolingType.ALL
        if (task_name == "encode" and config.task == "reward"
                and config.architecture.endswith("ForProcessRewardModel")):
            pooling_type = PoolingType.STEP  # a process reward model scores the steps (vLLM)
        if task_name == "token_classify" and softmax_by_default(config):
            defaults.activation = True  # token classifiers, masked-LM heads (vLLM)
    elif task_name == "embed" and config.st_config is not None:
        pooling_type = config.st_config.pooling_type or pooling_type
        defaults.normalize = config.st_config.normalize
    elif task_name == "classify" and getattr(config.hf_config, "classifier_pooling",
                                             None) == "mean":
        pooling_type = PoolingType.MEAN  # a ModernBERT classifier's mean of its tokens
    if config.auto_truncate:  # to the model's length, keeping the start (TEI's)
        defaults.truncate_prompt_tokens = -1
        defaults.truncation_side = "right"
    override = config.override_pooler_config
    if override is None:
        return TaskPooler(pooling_type, defaults)
    if one_row and override.seq_pooling_type is not None:
        pooling_type = PoolingType(override.seq_pooling_type)
    # STEP picks rows and columns in the encode task's head.
    if task_name == "encode" and override.tok_pooling_type is not None:
        pooling_type = PoolingType(override.tok_pooling_type)
    if task_name == configured_pooling_task(override, config.task):
        # vLLM's one switch, use_activation, is normalize where the task normalises.
        given = PoolingParams(normalize=override.normalize, dimensions=override.dimensions,
                              activation=override.activation,
                              step_tag_id=override.step_tag_id,
                              returned_token_ids=override.returned_token_ids).for_task(task_name)
        for name in given.set_fields():
            setattr(defaults, name, getattr(given, name))
    return TaskPooler(pooling_type, defaults)


def check_pooler_config(pooler_config: PoolerConfig | None, model_task: str,
                        supported_tasks: tuple[str, ...]) -> None:
    """Refuse at load what a pooler configuration cannot mean for this model: a default
    task it does not serve (vLLM's message), a sequence pooling type for a model with
    no sequence task, calibration for a model that does not classify, and chunked
    processing where outputs do not average."""
    if pooler_config is None:
        return
    task = pooler_config.task
    if task is not None and task not in supported_tasks:
        raise ValueError(f"Unsupported task: {task!r} Supported tasks: {supported_tasks}")
    if pooler_config.seq_pooling_type is not None and not any(
            pooling_task(t).one_row for t in supported_tasks):
        raise ValueError(f"seq_pooling_type {pooler_config.seq_pooling_type} pools tasks with "
                         f"one vector per input; this model serves {', '.join(supported_tasks)}.")
    if pooler_config.calibrates_logits and model_task != "classify":
        raise ValueError(f"logit_mean and logit_sigma calibrate a classifier's logits; this "
                         f"model's task is {model_task!r}.")
    check_chunked_processing(pooler_config, model_task)


def check_chunked_processing(pooler_config: PoolerConfig | None, model_task: str) -> None:
    """Refuse at load what chunked processing cannot mean: a model that does not embed
    (its pooler gives rows per token or per step, which do not average), or a
    ``max_embed_len`` without chunking."""
    if pooler_config is None:
        return
    if pooler_config.enable_chunked_processing:
        if model_task != "embed":
            raise ValueError(
                f"enable_chunked_processing applies to embedding models (CLS, MEAN or LAST "
                f"pooling); this model's task is {model_task!r}, whose outputs do not average "
                "over chunks.")
        limit = pooler_config.max_embed_len
        if limit is not None and limit < 1:
            raise ValueError(f"max_embed_len must be positive, not {limit}.")
    elif pooler_config.max_embed_len is not None:
        raise ValueError("max_embed_len needs enable_chunked_processing: true.")
