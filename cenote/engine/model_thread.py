"""The one thread that loads the model and runs every batch."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

R = TypeVar("R")


class ModelThread:
    """The one thread that loads the model and runs every batch.

    Why one thread for both: on CPU, OpenMP keeps a team of worker threads for
    each thread that ran a parallel region. A model loaded on the main thread
    and run on another leaves two teams, more threads than cores, and libgomp
    then stops spin-waiting between parallel regions: small batches ran about
    twice as slow. A daemon thread, so a forgotten shutdown cannot hang exit.
    """

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve_calls, name="cenote-engine",
                                        daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], R]) -> Future[R]:
        """Run ``fn`` on the model thread after the calls already submitted."""
        future: Future[R] = Future()
        self._calls.put((fn, future))
        return future

    def close(self) -> None:
        """Let the thread end once the calls already submitted are done."""
        self._calls.put(None)

    def _serve_calls(self) -> None:
        while (call := self._calls.get()) is not None:
            fn, future = call
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed to whoever waits on the future
                future.set_exception(exc)
