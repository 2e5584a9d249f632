"""Data-parallel engines: N engine processes behind one front end.

The front end tokenises and prepares records; each request's records go whole to the
engine with the fewest tokens outstanding, which batches them with its other
requests exactly as a single engine would (so outputs equal those of one engine). An
engine process that dies fails only the requests it held (:class:`EngineDiedError`,
a 503 with ``Retry-After``) and is started again; the others go on.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from cenote.config import ModelConfig
from cenote.engine.client import settle_future
from cenote.engine.core import (
    BatchStats,
    EngineDiedError,
    EngineStoppedError,
    QueueFullError,
)
from cenote.engine.engine_process import (
    EngineProcess,
    Placement,
    error_from_wire,
    from_wire,
    placements,
)
from cenote.engine.timings import request_timings
from cenote.inputs.prompts import SequenceInput

logger = logging.getLogger(__name__)

# A dead engine's clients are told to come back after about the time a restart takes.
_RESTART_RETRY_AFTER_S = 10
_RESTART_BACKOFF_S = (1, 2, 5, 10, 30)


@dataclass(eq=False)
class _Pending:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    num_seqs: int
    num_tokens: int


@dataclass(eq=False)
class _Engine:
    """One engine process and what the front end knows of it."""

    placement: Placement
    process: EngineProcess | None = None
    loading: EngineProcess | None = None  # a process starting, not taking work yet
    alive: bool = False
    pending: dict[int, _Pending] = field(default_factory=dict)
    num_seqs: int = 0
    num_tokens: int = 0
    last_event: float = field(default_factory=time.monotonic)
    # Decaying sums of the tokens run and the time it took, for Retry-After.
    recent_tokens: float = 0.0
    recent_seconds: float = 0.0


class DataParallelEngineClient:
    """An :class:`~cenote.engine.client.EngineClient` over ``size`` engine processes.

    ``load()`` starts them and waits until each has loaded the model (it returns the
    model's output width, which the front end's pooling policy needs); ``start()``
    starts listening to them. ``max_queued_tokens`` caps the tokens outstanding over
    all engines; ``max_queue_seconds`` is each engine's own admission rule.
    """

    def __init__(self, config: ModelConfig, size: int, *,
                 on_batch: Callable[[BatchStats], None] | None = None,
                 max_queued_tokens: int | None = None,
                 max_queue_seconds: float | None = None) -> None:
        if size < 1:
            raise ValueError(f"The data-parallel size must be at least 1; got {size}.")
        self.config = config
        self.on_batch = on_batch
        self.max_queued_tokens = max_queued_tokens
        self.max_queue_seconds = max_queue_seconds
        self.engines = [_Engine(p) for p in placements(config, size)]
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._started = False
        self._stopping = False

    # ---- lifecycle -------------------------------------------------------

    def load(self) -> int | None:
        """Start every engine process (in parallel) and wait for each to load."""
        for engine in self.engines:
            logger.info("Starting data-parallel %s", engine.placement.describe())
        with ThreadPoolExecutor(len(self.engines)) as pool:
            loads = [pool.submit(self._spawn, engine) for engine in self.engines]
            errors = [f.exception() for f in loads]
        if any(errors):
            self.shutdown()
            raise next(e for e in errors if e is not None)
        return loads[0].result()

    def _spawn(self, engine: _Engine) -> int | None:
        with self._lock:
            if self._stopping:
                raise EngineStoppedError("The engine is shutting down.")
            process = engine.loading = EngineProcess(self.config, engine.placement,
                                                     self.max_queue_seconds)
        try:
            width = process.wait_ready(abandon=lambda: self._stopping)
            with self._lock:
                if self._stopping:  # shut down while it loaded: it never takes work
                    raise EngineStoppedError("The engine is shutting down.")
                engine.process, engine.alive, engine.loading = process, True, None
                engine.last_event = time.monotonic()
        except BaseException:
            engine.loading = None
            process.stop(timeout=5)
            raise
        return width

    def start(self) -> None:
        """Listen to every engine (one thread each, which also restarts it if it dies)."""
        if self._started:
            raise RuntimeError("The engine is already started.")
        self._started = True
        for engine in self.engines:
            threading.Thread(target=self._listen, args=(engine,), daemon=True,
                             name=f"cenote-engine-{engine.placement.index}-reader").start()

    def shutdown(self) -> None:
        """Stop every engine (all asked at once, then each waited for); fail whatever
        they still held. An engine still loading is stopped too."""
        with self._lock:
            self._stopping = True
            processes = [p for e in self.engines for p in (e.process, e.loading) if p]
            for engine in self.engines:
                engine.alive = False
        for process in processes:
            process.request_stop()
        for process in processes:
            process.join(30.0)
        for engine in self.engines:
            self._fail_pending(engine, EngineStoppedError("The engine is shutting down."))

    @property
    def num_engines(self) -> int:
        return len(self.engines)

    @property
    def num_alive(self) -> int:
        return sum(engine.alive for engine in self.engines)

    @property
    def is_running(self) -> bool:
        """True while at least one engine takes work."""
        return self._started and not self._stopping and self.num_alive > 0

    @property
    def num_waiting_seqs(self) -> int:
        """Sequences sent to the engines and not yet answered."""
        return sum(engine.num_seqs for engine in self.engines)

    @property
    def num_waiting_tokens(self) -> int:
        """Tokens sent to the engines and not yet answered."""
        return sum(engine.num_tokens for engine in self.engines)

    @property
    def seconds_without_progress(self) -> float:
        """The longest time a busy engine has gone without finishing a batch."""
        now = time.monotonic()
        return max((now - e.last_event for e in self.engines if e.alive and e.pending),
                   default=0.0)

    # ---- requests --------------------------------------------------------

    def check_admission(self, num_tokens: int = 0) -> None:
        """429 while more than ``max_queued_tokens`` are outstanding over all engines
        (the rule for requests bigger than one batch is each engine's own)."""
        waiting = self.num_waiting_tokens
        if self.max_queued_tokens is None or waiting <= self.max_queued_tokens:
            return
        rate = sum(e.recent_tokens / e.recent_seconds for e in self.engines
                   if e.alive and e.recent_seconds)
        retry_after = 1 if not rate else min(60, max(1, math.ceil(waiting / rate)))
        raise QueueFullError(
            f"The server is busy: {waiting} tokens are queued, more than the "
            f"{self.max_queued_tokens} it admits. Retry after {retry_after} s.", retry_after)

    async def run(self, seqs: list[SequenceInput], pooling_task: str) -> list[torch.Tensor]:
        """Send the records to the least-loaded engine and wait for its outputs."""
        loop = asyncio.get_running_loop()
        pending = _Pending(loop, loop.create_future(), len(seqs), sum(s.cost for s in seqs))
        request_id = next(self._ids)
        with self._lock:
            live = [e for e in self.engines if e.alive]
            if not live or self._stopping:
                raise EngineStoppedError("No engine is running.")
            engine = min(live, key=lambda e: e.num_tokens)
            self.check_admission(pending.num_tokens)
            if not engine.pending:
                engine.last_event = time.monotonic()
            engine.pending[request_id] = pending
            engine.num_seqs += pending.num_seqs
            engine.num_tokens += pending.num_tokens
            process = engine.process
        try:
            process.send(("run", request_id, seqs, pooling_task))
        except (OSError, ValueError):  # the process died just now: its reader fails this
            pass
        except BaseException:  # could not be sent at all (not picklable): not outstanding
            self._settle(engine, request_id)
            raise
        try:
            outputs = await pending.future
        except asyncio.CancelledError:
            if self._settle(engine, request_id) is not None:
                try:
                    process.send(("withdraw", request_id))
                except (OSError, ValueError):
                    pass
            raise
        if (timings := request_timings.get()) is not None:
            timings.mark_ran(None)  # the engine process does not say when its batch began
        return outputs

    # ---- listening -------------------------------------------------------

    def _listen(self, engine: _Engine) -> None:
        while not self._stopping:
            try:
                message = engine.process.recv()
                engine.last_event = time.monotonic()
                self._handle(engine, message)
            except Exception as exc:  # the pipe closed (EOF), or a message made no sense
                if self._stopping:
                    return
                if not isinstance(exc, (EOFError, OSError)):
                    logger.exception("Engine %d sent what cannot be read; restarting it",
                                     engine.placement.index)
                try:
                    self._on_death(engine)
                except Exception:  # shut down while restarting
                    if not self._stopping:
                        logger.exception("Restarting engine %d failed",
                                         engine.placement.index)
                    return

    def _handle(self, engine: _Engine, message: tuple) -> None:
        if message[0] == "done":
            _, request_id, payload = message
            pending = self._settle(engine, request_id)
            if pending is not None:
                outcome = (error_from_wire(*payload[1:])
                           if isinstance(payload, tuple) else from_wire(payload))
                _resolve(pending, outcome)
        elif message[0] == "batch":
            self._observe(engine, message[1])

    def _settle(self, engine: _Engine, request_id: int) -> _Pending | None:
        with self._lock:
            pending = engine.pending.pop(request_id, None)
            if pending is not None:
                engine.num_seqs -= pending.num_seqs
                engine.num_tokens -= pending.num_tokens
        return pending

    def _observe(self, engine: _Engine, stats: BatchStats) -> None:
        engine.recent_tokens = 0.95 * engine.recent_tokens + stats.num_tokens
        engine.recent_seconds = 0.95 * engine.recent_seconds + stats.seconds
        if self.on_batch is not None:
            try:
                self.on_batch(stats)
            except Exception:  # metrics must never take the reader down
                logger.exception("The batch observer failed")

    def _on_death(self, engine: _Engine) -> None:
        """Fail the dead engine's requests, then start it again until it comes back."""
        with self._lock:
            engine.alive = False
        logger.error("Engine process %d (pid %s) died; failing its %d request(s) and "
                     "restarting it", engine.placement.index, engine.process.pid,
                     len(engine.pending))
        self._fail_pending(engine, EngineDiedError(
            "The engine process running this request died; it is being restarted. Retry "
            f"after {_RESTART_RETRY_AFTER_S} s.", _RESTART_RETRY_AFTER_S))
        engine.process.stop(timeout=1)
        for attempt in itertools.count():
            if self._stopping:
                return
            try:
                self._spawn(engine)
            except Exception as exc:
                delay = _RESTART_BACKOFF_S[min(attempt, len(_RESTART_BACKOFF_S) - 1)]
                logger.error("Restarting engine %d failed (%s); trying again in %d s",
                             engine.placement.index, exc, delay)
                time.sleep(delay)
                continue
            logger.info("Engine process %d is back (pid %s)", engine.placement.index,
                        engine.process.pid)
            return

    def _fail_pending(self, engine: _Engine, exc: BaseException) -> None:
        with self._lock:
            failed = list(engine.pending.values())
            engine.pending.clear()
            engine.num_seqs = engine.num_tokens = 0
        for pending in failed:
            _resolve(pending, exc)


def _resolve(pending: _Pending, outcome: list[torch.Tensor] | BaseException) -> None:
    """Settle a request's future on its event loop (from a reader thread)."""
    try:
        pending.loop.call_soon_threadsafe(settle_future, pending.future, outcome)
    except RuntimeError:  # its event loop has closed: nobody waits any more
        pass

