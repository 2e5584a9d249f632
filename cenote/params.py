"""Per-request pooling parameters (vLLM's ``PoolingParams``)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from cenote.exceptions import VLLMValidationError
from cenote.tasks import pooling_task as task_named

# ColBERT's two ways of reading a text (``PoolingParams.embedding_mode``).
EMBEDDING_MODES = ("query", "document")


def one_activation(**aliases: bool | None) -> bool | None:
    """The one value of ``activation`` and its aliases (``softmax``, vLLM's older name,
    and ``use_activation``, its current one); ``ValueError`` when they disagree."""
    given = {name: value for name, value in aliases.items() if value is not None}
    if len(set(given.values())) > 1:
        raise ValueError(f"{', '.join(f'`{name}`' for name in given)} are aliases of one "
                         "another (whether the activation applies); they must agree.")
    return next(iter(given.values()), None)


@dataclass
class LateChunkingParams:
    """Late chunking (vLLM's ``LateChunkingParams``): the whole text runs through the
    model once, then its token vectors are averaged over consecutive ``chunk_size``-token
    chunks (the last may be shorter), one vector per chunk, normalised as the task's
    vectors are. Special tokens count toward the chunks and their means. Mutable, as
    vLLM's: a request checks it again when it is sent."""

    chunk_size: int

    def __post_init__(self) -> None:
        self.verify()

    def verify(self) -> None:
        if type(self.chunk_size) is not int or not 0 < self.chunk_size < 2**63:
            raise VLLMValidationError("chunk_size must be a positive integer less than 2**63",
                                      parameter="chunk_size")


@dataclass
class PoolingParams:
    """Parameters of one pooling request; ``None`` means "use the model's default".

    ``use_activation`` (vLLM's current name) and ``softmax`` are accepted as aliases
    of ``activation``, which the embedding tasks read as ``normalize`` (``for_task``).
    """

    dimensions: int | None = None
    normalize: bool | None = None
    activation: bool | None = None
    truncate_prompt_tokens: int | None = None
    step_tag_id: int | None = None
    returned_token_ids: list[int] | None = None
    # Which end truncate_prompt_tokens cuts: "left" keeps the last tokens (vLLM's
    # default), "right" the first (Sentence-Transformers' and TEI's).
    truncation_side: str | None = None
    # "max_length": inputs padded with the pad token to the model's limit (as vLLM, the
    # model reads the pad tokens and they count as input); "do_not_pad", the default.
    padding: str | None = None
    # token_embed only: one vector per chunk of the whole text's token vectors.
    late_chunking_params: LateChunkingParams | None = None
    # token_embed of a late-interaction (ColBERT) model: the text read as a "query"
    # (query marker, expansion to the query length) or a "document" (document marker).
    embedding_mode: str | None = None
    # vLLM's free-form extras a task's processing may read (score: max_tokens_per_query,
    # max_tokens_per_doc); never checked against the task's parameters.
    extra_kwargs: dict[str, Any] | None = None

    def __init__(
        self,
        dimensions: int | None = None,
        normalize: bool | None = None,
        activation: bool | None = None,
        softmax: bool | None = None,
        truncate_prompt_tokens: int | None = None,
        step_tag_id: int | None = None,
        returned_token_ids: list[int] | None = None,
        use_activation: bool | None = None,
        truncation_side: str | None = None,
        padding: str | None = None,
        late_chunking_params: LateChunkingParams | None = None,
        embedding_mode: str | None = None,
        extra_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.dimensions = dimensions
        self.normalize = normalize
        self.activation = one_activation(activation=activation, softmax=softmax,
                                         use_activation=use_activation)
        self.truncate_prompt_tokens = truncate_prompt_tokens
        self.step_tag_id = step_tag_id
        self.returned_token_ids = (
            list(returned_token_ids) if returned_token_ids is not None else None
        )
        self.truncation_side = truncation_side
        self.padding = padding
        self.late_chunking_params = late_chunking_params
        self.embedding_mode = embedding_mode
        self.extra_kwargs = dict(extra_kwargs) if extra_kwargs is not None else None

    @property
    def softmax(self) -> bool | None:
        return self.activation

    @property
    def use_activation(self) -> bool | None:
        return self.activation

    def set_fields(self) -> set[str]:
        return {f.name for f in fields(self) if getattr(self, f.name) is not None}

    def verify(self, pooling_task: str) -> None:
        """Raise ``ValueError`` if a parameter does not belong to ``pooling_task``."""
        if self.late_chunking_params is not None:
            self._verify_late_chunking(pooling_task)
        allowed = task_named(pooling_task).parameters
        extra = sorted(self.set_fields() - allowed - {"extra_kwargs"})
        if extra:
            raise ValueError(
                f"{', '.join(extra)} {'is' if len(extra) == 1 else 'are'} not a valid "
                f"parameter for the {pooling_task!r} pooling task; it accepts "
                f"{', '.join(sorted(allowed))}."
            )
        if self.truncation_side not in (None, "left", "right"):
            raise ValueError(f"truncation_side must be 'left' or 'right', not "
                             f"{self.truncation_side!r}.")
        if self.padding not in (None, "do_not_pad", "max_length"):
            raise ValueError(f"padding must be 'do_not_pad' or 'max_length', not "
                             f"{self.padding!r}.")
        if self.dimensions is not None and (
            not isinstance(self.dimensions, int) or isinstance(self.dimensions, bool)
        ):
            raise ValueError("dimensions must be an integer.")
        if self.embedding_mode not in (None, *EMBEDDING_MODES):
            raise VLLMValidationError(f"embedding_mode must be 'query' or 'document', not "
                                      f"{self.embedding_mode!r}.", parameter="embedding_mode")

    def _verify_late_chunking(self, pooling_task: str) -> None:
        """Late chunking's conditions, worded as vLLM's: token_embed, and the whole text
        as it is (no cut, no padding: the chunks map back to the text)."""
        if not isinstance(self.late_chunking_params, LateChunkingParams):
            raise TypeError("late_chunking_params must be a LateChunkingParams.")
        self.late_chunking_params.verify()
        if pooling_task != "token_embed":
            raise VLLMValidationError("Late chunking requires token_embed",
                                      parameter="late_chunking_params")
        if self.truncate_prompt_tokens is not None or self.padding == "max_length":
            raise VLLMValidationError(
                "Late chunking does not support input padding, truncation or renderer text "
                "normalization", parameter="late_chunking_params")
        if self.embedding_mode is not None:
            raise VLLMValidationError("Late chunking cannot be combined with embedding_mode",
                                      parameter="embedding_mode")

    def for_task(self, pooling_task: str) -> PoolingParams:
        """These params as ``pooling_task`` reads them. vLLM has one switch for a pooler's
        last step, ``use_activation``: for the tasks that normalise and have no
        activation (embed, token_embed) it is ``normalize``."""
        allowed = task_named(pooling_task).parameters
        if self.activation is None or "activation" in allowed or "normalize" not in allowed:
            return self
        read = replace(self)
        read.normalize = one_activation(normalize=self.normalize, use_activation=self.activation)
        read.activation = None
        return read

    def merged_over(self, defaults: PoolingParams | None) -> PoolingParams:
        """These params with unset fields taken from ``defaults``."""
        if defaults is None:
            return replace(self)
        merged = replace(defaults)
        for name in self.set_fields():
            setattr(merged, name, getattr(self, name))
        return merged

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PoolingParams:
        return cls(**values)
