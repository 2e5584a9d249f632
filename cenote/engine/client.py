"""What the front end talks to: an engine that runs input records and answers on the
event loop. ``InProcessEngineClient`` is an :class:`EngineCore` in this process;
:class:`~cenote.engine.data_parallel.DataParallelEngineClient` is engines in other
processes, answering to the same interface."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

import torch

from cenote.engine.core import BatchStats, CoreRequest, EngineCore, Outcome
from cenote.engine.timings import request_timings
from cenote.inputs.prompts import SequenceInput


class EngineClient(Protocol):
    """An engine as the front end sees it."""

    on_batch: Callable[[BatchStats], None] | None

    @property
    def num_engines(self) -> int: ...

    @property
    def num_alive(self) -> int: ...

    def start(self) -> None: ...

    def shutdown(self) -> None: ...

    @property
    def is_running(self) -> bool: ...

    @property
    def num_waiting_seqs(self) -> int: ...

    @property
    def num_waiting_tokens(self) -> int: ...

    @property
    def seconds_without_progress(self) -> float: ...

    def check_admission(self, num_tokens: int = 0) -> None: ...

    async def run(self, seqs: list[SequenceInput], pooling_task: str) -> list[torch.Tensor]: ...


class InProcessEngineClient(EngineCore):
    """An :class:`EngineCore` on a thread of this process, answering asyncio futures:
    the core's lifecycle, health and admission as they are, plus ``run``."""

    num_engines = 1

    @property
    def num_alive(self) -> int:
        return int(self.is_running)

    async def run(self, seqs: list[SequenceInput], pooling_task: str) -> list[torch.Tensor]:
        """Queue the records and wait for their outputs (input order). If the caller is
        cancelled (timeout, client gone), the records not yet run leave the queue."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def on_done(outcome: Outcome) -> None:  # on the model thread
            loop.call_soon_threadsafe(settle_future, future, outcome)

        request = CoreRequest(seqs, on_done)
        self.submit(request, pooling_task)
        try:
            outputs = await future
        except asyncio.CancelledError:
            self.withdraw(request)
            raise
        if (timings := request_timings.get()) is not None:
            timings.mark_ran(request.started_ns)
        return outputs


def settle_future(future: asyncio.Future, outcome: Outcome) -> None:
    """Give ``future`` its outcome (on its event loop), unless its awaiting side was
    cancelled meanwhile (timeout, disconnect)."""
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
