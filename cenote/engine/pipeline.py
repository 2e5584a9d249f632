"""Batches run one ahead: batch k+1 is packed while batch k runs.

On a GPU, :meth:`ModelRunner.launch` only queues the batch's kernels, so the host is
free while they run. It then packs the next batch (token ids flattened, index
arithmetic, the copy to the device from pinned memory, which waits for nothing) and
only then waits for the first batch's outputs; the next batch is launched before the
first one's outputs are handed on. That is one batch in flight, as
text-embeddings-inference runs: the device waits for the host only while one batch's
outputs are copied back.

On a CPU, ``launch`` computes the batch, so the same order costs nothing and gains
nothing: a batch's outputs are handed on before the next batch runs, so no request waits
for a batch it is not in.

A step that raises does not stop the loop: the batch's outcome is the exception, and
the caller decides (the offline engine raises it, the server's core runs the batch's
members one by one).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

from cenote.engine.runner import ModelRunner
from cenote.inputs.prompts import SequenceInput

K = TypeVar("K")
BatchOutcome = list[torch.Tensor] | Exception
Picked = tuple[K, Sequence[SequenceInput], str]
"""A batch to run: the caller's key for it, its records and their pooling task."""


def run_one_ahead(
    runner: ModelRunner,
    next_batch: Callable[[bool], Picked | None],
    finish: Callable[[K, BatchOutcome], None],
) -> None:
    """Run batches until ``next_batch`` has none and none is in flight.

    ``next_batch(wait)``: the next batch, or None when there is none; ``wait`` is True
    only while no batch is in flight (it may then block until one comes).
    ``finish(key, outcome)``: called once per batch, in the order they were picked,
    with the batch's outputs on the CPU (in record order) or the exception that a step
    raised.
    """
    asynchronous = runner.launches_async
    in_flight: tuple[K, int, list[torch.Tensor] | Exception] | None = None
    while True:
        picked = next_batch(in_flight is None)
        if picked is None and in_flight is None:
            return
        prepared = _attempt(runner.prepare, picked[1], picked[2]) if picked else None
        done = None
        if in_flight is not None:
            key, count, launched = in_flight
            done = key, _collect(runner, launched, count)
            in_flight = None
            if not asynchronous:
                finish(*done)
                done = None
        if picked is not None:
            launched = (prepared if isinstance(prepared, Exception)
                        else _attempt(runner.launch, prepared))
            in_flight = picked[0], len(picked[1]), launched
        if done is not None:  # its host work overlaps the batch just launched
            finish(*done)


def _collect(runner: ModelRunner, launched: list[torch.Tensor] | Exception,
             count: int) -> BatchOutcome:
    if isinstance(launched, Exception):
        return launched
    outputs = _attempt(runner.collect, launched)
    if not isinstance(outputs, Exception) and len(outputs) != count:
        return RuntimeError(f"{len(outputs)} outputs for {count} sequences")
    return outputs


R = TypeVar("R")


def _attempt(step: Callable[..., R], *args) -> R | Exception:
    try:
        return step(*args)
    except Exception as exc:  # the batch's outcome; its caller decides
        return exc
