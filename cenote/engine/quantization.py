"""What opt-in int8 costs in accuracy: the model's outputs on the calibration texts the
package ships, with float and with int8 matmuls, compared once at load and logged (and
kept on the engine, for benchmarks and ``/v1/models`` users to read)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cenote.models.quantization import (
    drop_float_weights,
    observe_inputs,
    quantize_linears,
    stop_observing,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Int8Accuracy:
    """Cosine similarity of int8 outputs to float ones, over the calibration texts, and
    the largest difference of any value (what counts for a score or a single logit,
    whose cosine is only its sign)."""

    min_cosine: float
    mean_cosine: float
    num_texts: int
    pooling_task: str
    max_abs_diff: float = 0.0

    def __str__(self) -> str:
        return (f"cosine to the float model on {self.num_texts} calibration texts "
                f"({self.pooling_task}): min {self.min_cosine:.4f}, "
                f"mean {self.mean_cosine:.5f}; largest difference {self.max_abs_diff:.2e}")


def measure_int8(model: nn.Module, run: Callable[[], list[torch.Tensor]], num_texts: int,
                 pooling_task: str) -> Int8Accuracy:
    """``run()`` (the calibration texts through the engine) with float matmuls, recording
    each matmul's input ranges; quantize; ``run()`` again with int8 matmuls; free the
    float weights."""
    with observe_inputs(model):
        reference = run()
    try:
        quantize_linears(model)
    finally:
        stop_observing(model)
    quantized = run()
    drop_float_weights(model)
    pairs = [(_flat(a), _flat(b)) for a, b in zip(reference, quantized, strict=True)]
    cosines = torch.stack([F.cosine_similarity(a, b, dim=0) for a, b in pairs])
    difference = max((a - b).abs().max().item() for a, b in pairs)
    accuracy = Int8Accuracy(cosines.min().item(), cosines.mean().item(), num_texts,
                            pooling_task, difference)
    logger.info("int8 matmuls: %s", accuracy)
    return accuracy


def _flat(output: torch.Tensor) -> torch.Tensor:
    return (output.to_dense() if output.is_sparse else output).flatten().float()
