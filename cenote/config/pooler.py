"""The pooler's configuration: pooling types, ``override_pooler_config``, and the
default pooler of each pooling task with every configuration layer applied (model
default < Sentence-Transformers config < ``override_pooler_config``)."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from cenote.params import PoolingParams, one_activation
from cenote.tasks import OWN_POOLING_TASK, pooling_task

if TYPE_CHECKING:
    from cenote.config.model import ModelConfig


class PoolingType(str, enum.Enum):
    LAST = "LAST"
    ALL = "ALL"
    CLS = "CLS"
    MEAN = "MEAN"
    STEP = "STEP"


@dataclass
class PoolerConfig:
    """Overrides of a model's default pooler (``--override-pooler-config``)."""

    pooling_type: str | None = None
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

    def __post_init__(self) -> None:
        for name in ("normalize", "activation", "softmax", "use_activation",
                     "enable_chunked_processing"):
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
        if self.pooling_type is not None:
            name = str(self.pooling_type).upper()
            if name not in PoolingType.__members__:
                raise ValueError(
                    f"Unknown pooling_type {self.pooling_type!r}; "
                    f"choose one of {', '.join(PoolingType.__members__)}."
                )
            self.pooling_type = name
        self.activation = one_activation(activation=self.activation, softmax=self.softmax,
                                         use_activation=self.use_activation)
        self.softmax = self.use_activation = None

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


def task_pooler(config: ModelConfig, task_name: str) -> TaskPooler:
    """The default pooler of pooling task ``task_name`` for the model of ``config``."""
    if task_name == "score":  # a cross-encoder's classifier, else the embedding's cosine
        task_name = "classify" if config.task == "classify" else "embed"
    defaults = PoolingParams(**pooling_task(task_name).defaults)
    # BERT-family encoders pool their first token ([CLS]), decoders their last.
    pooling_type = PoolingType.CLS if config.is_bert_family else PoolingType.LAST
    if not pooling_task(task_name).one_row:  # encode and the token-level tasks: every row
        pooling_type = PoolingType.ALL
        if (task_name == "encode" and config.task == "reward"
                and config.architecture.endswith("ForProcessRewardModel")):
            pooling_type = PoolingType.STEP  # a process reward model scores the steps (vLLM)
    elif task_name == "embed" and config.st_config is not None:
        pooling_type = config.st_config.pooling_type or pooling_type
        defaults.normalize = config.st_config.normalize
    if config.auto_truncate:  # to the model's length, keeping the start (TEI's)
        defaults.truncate_prompt_tokens = -1
        defaults.truncation_side = "right"
    override = config.override_pooler_config
    if override is not None and task_name == OWN_POOLING_TASK[config.task]:
        if override.pooling_type is not None:
            pooling_type = PoolingType(override.pooling_type)
        for name in ("normalize", "dimensions", "activation", "step_tag_id",
                     "returned_token_ids"):
            value = getattr(override, name)
            if value is not None:
                setattr(defaults, name, value)
    return TaskPooler(pooling_type, defaults)


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
