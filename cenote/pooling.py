"""Poolers: pick token rows from the packed hidden states, apply the task's head,
then the per-request post-processing (Matryoshka truncation, normalisation,
activation).

The model hands over ``hidden`` as ``[num_tokens, hidden_size]`` for a whole
batch; ``cu_seqlens`` marks where each sequence starts.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cenote.config import DenseLayerConfig, ModelConfig, PoolingType
from cenote.params import PoolingParams


@dataclass
class PoolingMetadata:
    """Where each sequence of a packed batch lives."""

    seq_lens: list[int]
    cu_seqlens: torch.Tensor  # [num_seqs + 1], long, on the model's device
    input_ids: torch.Tensor  # [num_tokens]


def select_tokens(
    hidden: torch.Tensor, meta: PoolingMetadata, pooling_type: PoolingType
) -> torch.Tensor | list[torch.Tensor]:
    """One row per sequence (CLS, LAST, MEAN) or all rows of each sequence (ALL, STEP)."""
    starts = meta.cu_seqlens[:-1]
    if pooling_type is PoolingType.CLS:
        return hidden[starts]
    if pooling_type is PoolingType.LAST:
        return hidden[meta.cu_seqlens[1:] - 1]
    if pooling_type is PoolingType.MEAN:
        # fp32 sums of each sequence's rows in one scatter (per-sequence means cost a
        # few operations per sequence: 2.5x slower on a CPU, a kernel launch each on a GPU).
        lens = np.asarray(meta.seq_lens)
        owner = torch.from_numpy(np.repeat(np.arange(len(lens)), lens)).to(hidden.device)
        sums = hidden.new_zeros(len(lens), hidden.shape[-1], dtype=torch.float32)
        sums.index_add_(0, owner, hidden[:len(owner)].float())
        return sums / torch.from_numpy(lens).to(hidden.device, torch.float32)[:, None]
    return list(hidden.split(meta.seq_lens))


# Poolers that give one row per sequence: what embed and classify need.
ONE_ROW_POOLING = (PoolingType.CLS, PoolingType.MEAN, PoolingType.LAST)


def _resolve_torch_activation(path: str) -> nn.Module:
    """An activation named by its dotted path, e.g. ``torch.nn.modules.activation.Tanh``."""
    if not path.startswith("torch."):
        raise ValueError(f"Refusing to import activation {path!r}: only torch.* is allowed.")
    module_name, _, attr = path.rpartition(".")
    cls = getattr(importlib.import_module(module_name), attr)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"Activation {path!r} is not a torch.nn module.")
    return cls()


class DenseLayers(nn.Module):
    """The Sentence-Transformers ``Dense`` modules that follow pooling."""

    def __init__(self, layers: Sequence[DenseLayerConfig]) -> None:
        super().__init__()
        self.linears = nn.ModuleList(
            nn.Linear(cfg.in_features, cfg.out_features, bias=cfg.bias) for cfg in layers
        )
        self.activations = nn.ModuleList(_resolve_torch_activation(cfg.activation)
                                         for cfg in layers)
        for linear, cfg in zip(self.linears, layers, strict=True):
            from cenote.models.loading import load_state_dict

            state = load_state_dict(cfg.path)
            linear.load_state_dict(
                {k.removeprefix("linear."): v for k, v in state.items()}, strict=True
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for linear, activation in zip(self.linears, self.activations, strict=True):
            x = activation(linear(x))
        return x


def _apply_to_rows(
    head: nn.Module | None, pooled: torch.Tensor | list[torch.Tensor]
) -> torch.Tensor | list[torch.Tensor]:
    if head is None:
        return pooled
    weight = next(head.parameters(), None)
    if weight is not None:
        pooled = _to(pooled, weight.dtype)
    if isinstance(pooled, list):
        if not pooled:
            return pooled
        out = head(torch.cat(pooled))
        return list(out.split([len(p) for p in pooled]))
    return head(pooled)


class Pooler(nn.Module):
    """Turns a batch's hidden states into one output tensor per sequence.

    Heads (all optional): ``dense`` (Sentence-Transformers Dense layers, embed),
    ``classifier`` (classify/score, sequence-level), ``token_head`` (reward
    models, applied to each token for encode).
    """

    def __init__(
        self,
        config: ModelConfig,
        classifier: nn.Module | None = None,
        token_head: nn.Module | None = None,
        classifier_activation: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        st = config.st_config
        self.dense = DenseLayers(st.dense_layers) if st and st.dense_layers else None
        self.classifier = classifier
        self.token_head = token_head
        self.classifier_activation = classifier_activation
        self.task_poolers = {task: config.task_pooler(task)
                             for task in config.supported_pooling_tasks}
        self._check_task_poolers()

    def _check_task_poolers(self) -> None:
        """Refuse at load time a pooler configuration (``override_pooler_config``, the
        Sentence-Transformers config) that every request would fail on."""
        for task, task_pooler in self.task_poolers.items():
            kind = task_pooler.pooling_type
            if task != "encode" and kind not in ONE_ROW_POOLING:
                rows = "one row per token" if kind is PoolingType.ALL else "the step rows"
                raise ValueError(
                    f"Pooling type {kind.value} gives {rows}; the {task!r} task needs one "
                    f"vector per input: use {', '.join(t.value for t in ONE_ROW_POOLING)}.")
            try:
                self.resolve_params(task, None)
            except ValueError as exc:
                raise ValueError(f"The model's {task!r} pooler: {exc}") from exc

    def resolve_params(self, pooling_task: str, params: PoolingParams | None) -> PoolingParams:
        """Validate ``params`` for the task and fill unset fields from the defaults."""
        params = params or PoolingParams()
        params.verify(pooling_task)
        task_pooler = self.task_poolers[pooling_task]
        merged = params.merged_over(task_pooler.defaults)
        if pooling_task in ("embed", "encode") and merged.dimensions is not None:
            self._verify_dimensions(merged.dimensions)
        if merged.returned_token_ids is not None:
            self._check_returned_token_ids(merged.returned_token_ids)
        stepwise = merged.step_tag_id is not None or merged.returned_token_ids is not None
        if stepwise and task_pooler.pooling_type is not PoolingType.STEP:
            raise ValueError(
                "step_tag_id and returned_token_ids are only allowed with STEP pooling "
                f"(this model's {pooling_task!r} pooler uses {task_pooler.pooling_type.value})."
            )
        return merged

    def _check_returned_token_ids(self, ids: Sequence[int]) -> None:
        width = (getattr(self.token_head, "out_features", None) if self.token_head is not None
                 else getattr(self.config.hf_config, "hidden_size", None))
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

    def forward(
        self,
        hidden: torch.Tensor,
        meta: PoolingMetadata,
        pooling_task: str,
        params: Sequence[PoolingParams],
    ) -> list[torch.Tensor]:
        """Pool every sequence of the batch; ``params`` are already resolved."""
        pooling_type = self.task_poolers[pooling_task].pooling_type
        pooled = select_tokens(hidden, meta, pooling_type)
        if pooling_task == "embed":
            return self._embed(pooled, params)
        if pooling_task in ("classify", "score"):
            return self._classify(pooled, params, pooling_task)
        return self._encode(pooled, meta, pooling_type, params)

    def _embed(self, pooled, params: Sequence[PoolingParams]) -> list[torch.Tensor]:
        if self.dense is not None:
            pooled = _apply_to_rows(self.dense, pooled)
        if not isinstance(pooled, list) and _all_same(params, "dimensions", "normalize"):
            return list(_truncate_and_normalize(pooled.float(), params[0]).unbind(0))
        rows = _as_float_rows(pooled)
        return [_truncate_and_normalize(row, p) for row, p in zip(rows, params, strict=True)]

    def _classify(self, pooled, params: Sequence[PoolingParams],
                  pooling_task: str) -> list[torch.Tensor]:
        if self.classifier is None:
            raise ValueError(
                "This model has no classification head; load a *ForSequenceClassification "
                "checkpoint or a causal LM checkpoint that has a `score` head."
            )
        logits = _apply_to_rows(self.classifier, pooled)
        score = pooling_task == "score"
        if not isinstance(logits, list) and _all_same(params, "activation"):
            logits = logits.float()
            return list((self._activate(logits, score) if params[0].activation
                         else logits).unbind(0))
        return [self._activate(row, score) if p.activation else row
                for row, p in zip(_as_float_rows(logits), params, strict=True)]

    def _activate(self, logits: torch.Tensor, score: bool) -> torch.Tensor:
        """Probabilities: softmax (sigmoid for one label); for scores a cross-encoder's own
        configured activation where it has one (as vLLM: only the Score API uses it)."""
        if score and self.classifier_activation is not None:
            return self.classifier_activation(logits)
        if logits.shape[-1] == 1:
            return torch.sigmoid(logits)
        return torch.softmax(logits, dim=-1)

    def _encode(self, pooled, meta: PoolingMetadata, pooling_type: PoolingType,
                params: Sequence[PoolingParams]) -> list[torch.Tensor]:
        pooled = _apply_to_rows(self.token_head, pooled)
        rows = _as_float_rows(pooled)
        if pooling_type is PoolingType.STEP:
            ids = meta.input_ids.split(meta.seq_lens)
            rows = [_select_steps(row, seq_ids, p) for row, seq_ids, p in
                    zip(rows, ids, params, strict=True)]
        out = []
        for row, p in zip(rows, params, strict=True):
            row = _truncate_and_normalize(row, p)
            if p.activation:
                row = torch.softmax(row, dim=-1)
            out.append(row)
        return out


def _all_same(params: Sequence[PoolingParams], *names: str) -> bool:
    """Whether every params object agrees on ``names`` (so a batch op serves them all)."""
    return bool(params) and all(getattr(p, n) == getattr(params[0], n)
                                for p in params for n in names)


def _to(pooled, dtype: torch.dtype):
    if isinstance(pooled, list):
        return [p.to(dtype) for p in pooled]
    return pooled.to(dtype)


def _as_float_rows(pooled) -> list[torch.Tensor]:
    if isinstance(pooled, list):
        return [p.float() for p in pooled]
    return list(pooled.float().unbind(0))


def _truncate_and_normalize(row: torch.Tensor, params: PoolingParams) -> torch.Tensor:
    if params.dimensions is not None:
        row = row[..., : params.dimensions]
    if params.normalize:
        row = F.normalize(row, p=2, dim=-1)
    return row


def _select_steps(row: torch.Tensor, ids: torch.Tensor, params: PoolingParams) -> torch.Tensor:
    if params.returned_token_ids:
        row = row[:, params.returned_token_ids]
    if params.step_tag_id is not None:
        row = row[ids == params.step_tag_id]
    return row
