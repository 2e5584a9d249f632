"""What a request may ask of a model's poolers: each pooling task's default pooler, and
per-request ``PoolingParams`` checked against the task and the model and merged over
those defaults. Decided without tensors, before anything is tokenised or queued."""

from __future__ import annotations

from collections.abc import Sequence

from cenote.config import ModelConfig, PoolingType
from cenote.config.pooler import TaskPooler
from cenote.params import PoolingParams
from cenote.pooling.methods import ONE_ROW_POOLING
from cenote.tasks import pooling_task


class PoolingPolicy:
    """The default pooler of each pooling task the model serves, and the resolution of
    requests' parameters against it. ``output_width``: the columns of the encode
    task's rows (the per-token head's outputs, else the hidden size), which
    ``returned_token_ids`` may pick."""

    def __init__(self, config: ModelConfig, output_width: int | None) -> None:
        self.config = config
        self.output_width = output_width
        self.task_poolers: dict[str, TaskPooler] = {
            task: config.task_pooler(task) for task in config.supported_pooling_tasks}
        self._check_task_poolers()

    def _check_task_poolers(self) -> None:
        """Refuse at load time a pooler configuration (``override_pooler_config``, the
        Sentence-Transformers config) that every request would fail on."""
        for task, pooler in self.task_poolers.items():
            kind = pooler.pooling_type
            if pooling_task(task).one_row and kind not in ONE_ROW_POOLING:
                rows = "one row per token" if kind is PoolingType.ALL else "the step rows"
                raise ValueError(
                    f"Pooling type {kind.value} gives {rows}; the {task!r} task needs one "
                    f"vector per input: use {', '.join(t.value for t in ONE_ROW_POOLING)}.")
            try:
                self.resolve_params(task, None)
            except ValueError as exc:
                raise ValueError(f"The model's {task!r} pooler: {exc}") from exc

    def resolve_params(self, task: str, params: PoolingParams | None) -> PoolingParams:
        """Validate ``params`` for the task and fill unset fields from the defaults."""
        params = (params or PoolingParams()).for_task(task)
        params.verify(task)
        pooler = self.task_poolers[task]
        merged = params.merged_over(pooler.defaults)
        if task in ("embed", "encode") and merged.dimensions is not None:
            self._verify_dimensions(merged.dimensions)
        if merged.returned_token_ids is not None:
            self._check_returned_token_ids(merged.returned_token_ids)
        stepwise = merged.step_tag_id is not None or merged.returned_token_ids is not None
        if stepwise and pooler.pooling_type is not PoolingType.STEP:
            raise ValueError(
                "step_tag_id and returned_token_ids are only allowed with STEP pooling "
                f"(this model's {task!r} pooler uses {pooler.pooling_type.value})."
            )
        return merged

    def _check_returned_token_ids(self, ids: Sequence[int]) -> None:
        width = self.output_width
        for i in ids:
            if isinstance(i, bool) or not isinstance(i, int) or i < 0 or (
                    width is not None and i >= width):
                raise ValueError(f"returned_token_ids: {i!r} is not a column of this model's "
                                 f"output (0 to {width - 1 if width else '?'}).")

    def _verify_dimensions(self, dimensions: int) -> None:
        name = self.config.display_name
        if not self.config.is_matryoshka:
            raise ValueError(
                f'Model "{name}" does not support matryoshka representation, '
                "changing output dimensions will lead to poor results."
            )
        if dimensions < 1:
            raise ValueError("Dimensions must be greater than 0")
        allowed = self.config.matryoshka_dimensions
        if allowed is not None and dimensions not in allowed:
            raise ValueError(
                f'Model "{name}" only supports {str(allowed)} matryoshka dimensions, '
                "use other output dimensions will lead to poor results."
            )
