"""Pooling heads: what turns the pooled rows into a task's output.

Each head takes the rows a pooling method picked (one tensor of one row per
sequence, or a list of per-sequence row blocks) and the batch's resolved
``PoolingParams``, and returns one float tensor per sequence. The weights they
apply (Sentence-Transformers ``Dense`` layers, a classifier, a reward head) are
loaded by the model registry and handed in.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cenote.config import PoolingType
from cenote.config.sentence_transformers import DenseLayerConfig
from cenote.params import PoolingParams
from cenote.pooling.methods import PoolingMetadata

Pooled = torch.Tensor | list[torch.Tensor]


def resolve_torch_activation(path: str) -> nn.Module:
    """An activation named by its dotted path, e.g. ``torch.nn.modules.activation.Tanh``."""
    if not path.startswith("torch."):
        raise ValueError(f"Refusing to import activation {path!r}: only torch.* is allowed.")
    module_name, _, attr = path.rpartition(".")
    cls = getattr(importlib.import_module(module_name), attr)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"Activation {path!r} is not a torch.nn module.")
    return cls()


class DenseLayers(nn.Module):
    """The Sentence-Transformers ``Dense`` modules that follow pooling (weights are
    loaded by the registry)."""

    def __init__(self, layers: Sequence[DenseLayerConfig]) -> None:
        super().__init__()
        self.linears = nn.ModuleList(
            nn.Linear(cfg.in_features, cfg.out_features, bias=cfg.bias) for cfg in layers
        )
        self.activations = nn.ModuleList(resolve_torch_activation(cfg.activation)
                                         for cfg in layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for linear, activation in zip(self.linears, self.activations, strict=True):
            x = activation(linear(x))
        return x


class EmbeddingHead(nn.Module):
    """embed: optional Dense layers, then Matryoshka truncation and normalisation."""

    def __init__(self, dense: nn.Module | None = None) -> None:
        super().__init__()
        self.dense = dense

    def forward(self, pooled: Pooled, meta: PoolingMetadata,
                params: Sequence[PoolingParams]) -> list[torch.Tensor]:
        if self.dense is not None:
            pooled = apply_to_rows(self.dense, pooled)
        if not isinstance(pooled, list) and all_same(params, "dimensions", "normalize"):
            return list(truncate_and_normalize(pooled.float(), params[0]).unbind(0))
        rows = as_float_rows(pooled)
        return [truncate_and_normalize(row, p) for row, p in zip(rows, params, strict=True)]


@dataclass(frozen=True)
class LogitCalibration:
    """Platt scaling of a classifier's logits before its activation:
    ``(logit - mean) / sigma`` (vLLM's ``logit_mean`` and ``logit_sigma``)."""

    mean: float | None = None
    sigma: float | None = None

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self.mean is not None:
            logits = logits - self.mean
        if self.sigma is not None:
            logits = logits / self.sigma
        return logits


# The activation Hugging Face's problem_type asks for (as transformers' losses and
# vLLM read it): None where it says nothing, and the label count decides.
PROBLEM_TYPE_ACTIVATIONS = {"single_label_classification": None,
                            "multi_label_classification": "sigmoid",
                            "regression": "identity"}


class ClassifierHead(nn.Module):
    """classify and score: the model's classifier, calibrated where configured, then its
    activation: the one the HF config's ``problem_type`` names (sigmoid for multi-label,
    none for regression), else a cross-encoder's own configured activation (vLLM 0.34
    applies it to both APIs), else softmax (sigmoid for one label)."""

    def __init__(self, classifier: nn.Module | None, score: bool,
                 score_activation: nn.Module | None = None,
                 calibration: LogitCalibration = LogitCalibration(),
                 problem_type: str | None = None) -> None:
        super().__init__()
        self.classifier = classifier
        self.score = score
        self.score_activation = score_activation
        self.calibration = calibration
        self.problem_activation = PROBLEM_TYPE_ACTIVATIONS.get(problem_type or "")

    def forward(self, pooled: Pooled, meta: PoolingMetadata,
                params: Sequence[PoolingParams]) -> list[torch.Tensor]:
        if self.classifier is None:
            raise ValueError(
                "This model has no classification head; load a *ForSequenceClassification "
                "checkpoint or a causal LM checkpoint that has a `score` head."
            )
        logits = apply_to_rows(self.classifier, pooled)
        if not isinstance(logits, list) and all_same(params, "activation"):
            logits = self.calibration(logits.float())
            return list((self._activate(logits) if params[0].activation else logits).unbind(0))
        return [self._activate(row) if p.activation else row
                for row, p in zip(map(self.calibration, as_float_rows(logits)), params,
                                  strict=True)]

    def _activate(self, logits: torch.Tensor) -> torch.Tensor:
        if self.problem_activation == "identity":
            return logits
        if self.problem_activation == "sigmoid":
            return torch.sigmoid(logits)
        if self.score_activation is not None:
            return self.score_activation(logits)
        if logits.shape[-1] == 1:
            return torch.sigmoid(logits)
        return torch.softmax(logits, dim=-1)


class TokenHead(nn.Module):
    """encode: the model's per-token head where it has one (reward models), STEP's row and
    column selection, then truncation, normalisation and softmax as asked."""

    def __init__(self, token_head: nn.Module | None, pooling_type: PoolingType) -> None:
        super().__init__()
        self.token_head = token_head
        self.stepwise = pooling_type is PoolingType.STEP

    def forward(self, pooled: Pooled, meta: PoolingMetadata,
                params: Sequence[PoolingParams]) -> list[torch.Tensor]:
        rows = as_float_rows(apply_to_rows(self.token_head, pooled))
        if self.stepwise:
            ids = meta.input_ids.split(meta.seq_lens)
            rows = [select_steps(row, seq_ids, p) for row, seq_ids, p in
                    zip(rows, ids, params, strict=True)]
        out = []
        for row, p in zip(rows, params, strict=True):
            row = truncate_and_normalize(row, p)
            if p.activation:
                row = torch.softmax(row, dim=-1)
            out.append(row)
        return out


def apply_to_rows(head: nn.Module | None, pooled: Pooled) -> Pooled:
    """``head`` over every row, in its weights' dtype (one call for a list of blocks)."""
    if head is None:
        return pooled
    weight = next(head.parameters(), None)
    if weight is not None:
        pooled = ([p.to(weight.dtype) for p in pooled] if isinstance(pooled, list)
                  else pooled.to(weight.dtype))
    if isinstance(pooled, list):
        if not pooled:
            return pooled
        out = head(torch.cat(pooled))
        return list(out.split([len(p) for p in pooled]))
    return head(pooled)


def all_same(params: Sequence[PoolingParams], *names: str) -> bool:
    """Whether every params object agrees on ``names`` (so a batch op serves them all)."""
    if not params:
        return False
    first = params[0]
    values = [getattr(first, n) for n in names]
    return all(p is first or [getattr(p, n) for n in names] == values for p in params)


def as_float_rows(pooled: Pooled) -> list[torch.Tensor]:
    if isinstance(pooled, list):
        return [p.float() for p in pooled]
    return list(pooled.float().unbind(0))


def truncate_and_normalize(row: torch.Tensor, params: PoolingParams) -> torch.Tensor:
    if params.dimensions is not None:
        row = row[..., : params.dimensions]
    if params.normalize:
        row = F.normalize(row, p=2, dim=-1)
    return row


def select_steps(row: torch.Tensor, ids: torch.Tensor, params: PoolingParams) -> torch.Tensor:
    if params.returned_token_ids:
        row = row[:, params.returned_token_ids]
    if params.step_tag_id is not None:
        row = row[ids == params.step_tag_id]
    return row
