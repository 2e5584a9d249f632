"""When a request passed each stage of the engine, for tracing: the front end sets a
:class:`RequestTimings` for the request it answers, and the engine fills it in."""

from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import dataclass


@dataclass
class RequestTimings:
    """Wall-clock times (``time.time_ns()``) of a request's stages; None: not reached
    (or not known: engines in other processes do not report when a batch started)."""

    received: int
    prepared: int | None = None  # tokenised and validated
    scheduled: int | None = None  # its first input entered a batch
    finished: int | None = None  # its last output came back

    def mark_prepared(self) -> None:
        self.prepared = time.time_ns()

    def mark_ran(self, scheduled: int | None) -> None:
        if self.scheduled is None:
            self.scheduled = scheduled
        self.finished = time.time_ns()


request_timings: ContextVar[RequestTimings | None] = ContextVar("request_timings",
                                                               default=None)
