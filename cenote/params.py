"""Per-request pooling parameters (vLLM's ``PoolingParams``)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from cenote.tasks import pooling_task as task_named


def one_activation(**aliases: bool | None) -> bool | None:
    """The one value of ``activation`` and its aliases (``softmax``, vLLM's older name,
    and ``use_activation``, its current one); ``ValueError`` when they disagree."""
    given = {name: value for name, value in aliases.items() if value is not None}
    if len(set(given.values())) > 1:
        raise ValueError(f"{', '.join(f'`{name}`' for name in given)} are aliases of one "
                         "another (whether the activation applies); they must agree.")
    return next(iter(given.values()), None)


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
        allowed = task_named(pooling_task).parameters
        extra = sorted(self.set_fields() - allowed)
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
