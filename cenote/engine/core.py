"""The engine core: the batch loop on the model thread.

Requests' input records wait in a :class:`~cenote.engine.request_queue.RequestQueue`,
which packs records from all clients into shared token-budget batches; the loop runs
the batches through the runner, one ahead (:mod:`cenote.engine.pipeline`), and hands
every request its outputs, in input order, through the callback it came with. A batch
that fails is retried member by member so that only the inputs that fail alone fail
their requests. Admission control and the
health figures (``seconds_without_progress``) live here, beside the queue they read.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from cenote.config.lora import LoRAError
from cenote.engine.memory import HeapTrimmer
from cenote.engine.model_thread import ModelThread
from cenote.engine.pipeline import BatchOutcome, Picked, run_one_ahead
from cenote.engine.request_queue import Lane, RequestQueue, ScheduledBatch
from cenote.engine.runner import ModelRunner
from cenote.inputs.prompts import SequenceInput

logger = logging.getLogger(__name__)

Outcome = list[torch.Tensor] | BaseException


class EngineStoppedError(RuntimeError):
    """The engine is shutting down or its worker has died; no new work is taken."""


class EngineDiedError(EngineStoppedError):
    """The engine process running this request died (it is being restarted); the
    request may be sent again after ``retry_after_s``."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class BatchFailedError(RuntimeError):
    """The model raised on one of this request's inputs, even when it ran alone."""


class QueueFullError(RuntimeError):
    """The queue already holds more tokens than the engine admits; come back later.

    ``retry_after_s`` estimates when the queue will have room, from the recent
    token throughput.
    """

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass
class BatchStats:
    """What one executed batch did; handed to the engine's ``on_batch`` observer."""

    pooling_task: str
    num_seqs: int
    num_tokens: int
    seconds: float
    num_requests: int
    engine: int = 0
    """Which engine ran it (data-parallel engines are numbered from 0)."""


@dataclass(eq=False)
class CoreRequest:
    """A request in the core: its records, its results so far, and where its outcome
    goes (``on_done`` is called once, on the model thread)."""

    seqs: list[SequenceInput]
    on_done: Callable[[Outcome], None]
    results: list[torch.Tensor | None] = field(init=False)
    remaining: int = field(init=False)
    lane: Lane | None = None
    # Whether ``on_done`` was called. A request can fail while a batch with more of its
    # records is already in flight (batches run one ahead); that batch's outputs for it
    # are dropped.
    settled: bool = field(default=False, init=False)
    # When its first input entered a batch (time.time_ns()), for tracing.
    started_ns: int | None = field(default=None, init=False)

    def settle(self, outcome: Outcome) -> None:
        if not self.settled:
            self.settled = True
            self.on_done(outcome)

    def __post_init__(self) -> None:
        self.results = [None] * len(self.seqs)
        self.remaining = len(self.seqs)


class EngineCore:
    """The batch loop over one model, run on its :class:`ModelThread`.

    ``start()`` launches the loop; ``shutdown()`` stops it and fails whatever still
    waits with :class:`EngineStoppedError`.

    Admission control refuses a request with :class:`QueueFullError` when it
    arrives while the queue holds more than ``max_queued_tokens`` tokens, or,
    for a request bigger than one batch, while the work queued ahead of it
    would take more than ``max_queue_seconds`` at the recent throughput. Small
    requests jump ahead of the backlog, so only big ones would wait that long
    (and time out) on a slow or overloaded machine. A request is always
    admitted into a queue below both limits, however big it is.
    """

    def __init__(
        self,
        runner: ModelRunner,
        model_thread: ModelThread,
        max_num_batched_tokens: int,
        *,
        on_batch: Callable[[BatchStats], None] | None = None,
        max_queued_tokens: int | None = None,
        max_queue_seconds: float | None = None,
    ) -> None:
        self.runner = runner
        self.on_batch = on_batch
        self.max_queued_tokens = max_queued_tokens
        self.max_queue_seconds = max_queue_seconds
        self._model_thread = model_thread
        self._heap = HeapTrimmer()  # keeps a long-running server's RSS from creeping up
        self._queue: RequestQueue[CoreRequest] = RequestQueue(max_num_batched_tokens)
        self._cond = threading.Condition()
        self._stopping = False
        self._worker: Future[None] | None = None
        # Progress of the worker, for /health: a stuck model must not look healthy.
        self._idle = True
        self._last_progress = time.monotonic()
        # Recent throughput, for admission control and Retry-After: decaying sums of the
        # tokens run and the busy wall time it took, from one batch's end to the next
        # (so time lost between batches to a contended CPU or GIL counts too; a ratio
        # of sums, so that many tiny batches do not make the rate look like theirs).
        self._recent_tokens = 0.0
        self._recent_seconds = 0.0
        self._rate_clock = time.monotonic()

    # ---- lifecycle -------------------------------------------------------

    def start(self) -> None:
        """Start the loop that picks and runs batches, on the model thread."""
        if self._worker is not None:
            raise RuntimeError("The engine is already started.")
        self._worker = self._model_thread.submit(self._work)

    def shutdown(self) -> None:
        """Stop after the current batch; fail everything still queued."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._worker is not None:
            self._worker.exception()  # waits for the loop to end (a crash was logged)
        self._model_thread.close()

    @property
    def is_running(self) -> bool:
        """True while the batch loop is alive and taking work."""
        return self._worker is not None and not self._worker.done() and not self._stopping

    @property
    def num_waiting_seqs(self) -> int:
        """Sequences queued and not yet in a batch."""
        return self._queue.num_waiting_seqs

    @property
    def num_waiting_tokens(self) -> int:
        """Tokens queued and not yet in a batch."""
        return self._queue.num_waiting_tokens

    @property
    def seconds_without_progress(self) -> float:
        """How long the worker has been busy without starting or finishing a batch.

        0 while it waits for work. A value that keeps growing means the model
        hangs (or the worker is stuck), even though the worker thread is alive.
        """
        if self._idle:
            return 0.0
        return time.monotonic() - self._last_progress

    # ---- requests --------------------------------------------------------

    def submit(self, request: CoreRequest, pooling_task: str) -> None:
        """Queue ``request``'s records; raises :class:`EngineStoppedError` or
        :class:`QueueFullError` instead of queueing."""
        with self._cond:
            if not self.is_running:
                raise EngineStoppedError("The engine is not running.")
            costs = [s.cost for s in request.seqs]
            # Checked again: the queue may have filled while this request was tokenised.
            self.check_admission(sum(costs))
            request.lane = self._queue.add(request, pooling_task, costs)
            self._cond.notify()

    def withdraw(self, request: CoreRequest) -> None:
        """Drop the request's records that have not run yet (its caller went away)."""
        with self._cond:
            self._queue.remove(request.lane)

    def check_admission(self, num_tokens: int = 0) -> None:
        """Refuse new work while the queue is full (see the class docstring).

        ``num_tokens``: the request's own tokens, once it is tokenised.
        """
        waiting = self._queue.num_waiting_tokens
        rate = self._recent_tokens / self._recent_seconds if self._recent_seconds else 0.0
        if self.max_queued_tokens is not None and waiting > self.max_queued_tokens:
            reason = (f"{waiting} tokens are queued, more than the {self.max_queued_tokens} "
                      "it admits")
        elif (self.max_queue_seconds is not None and rate
              and num_tokens > self._queue.max_num_batched_tokens
              and waiting / rate > self.max_queue_seconds):
            reason = (f"the work queued ahead of this request takes about {waiting / rate:.0f} s,"
                      f" more than the {self.max_queue_seconds:g} s it admits for requests "
                      "bigger than one batch")
        else:
            return
        retry_after = 1 if not rate else min(60, max(1, math.ceil(waiting / rate)))
        raise QueueFullError(f"The server is busy: {reason}. Retry after {retry_after} s.",
                             retry_after)

    # ---- worker ----------------------------------------------------------

    def _work(self) -> None:
        try:
            self._batch_loop()
        except BaseException:
            # Unreachable unless cenote has a bug; /health turns 503 and nobody hangs.
            logger.exception("The engine's batch loop died")
            with self._cond:
                self._fail_waiting(EngineStoppedError("The engine stopped on an internal error."))
            raise

    def _batch_loop(self) -> None:
        run_one_ahead(self.runner, self._next_batch, self._finish)
        with self._cond:  # stopping: after the batches in flight, fail what still waits
            self._fail_waiting(EngineStoppedError("The engine is shutting down."))

    def _next_batch(self, wait: bool) -> Picked | None:
        """The next batch to run (None: stopping, or none queued and ``wait`` false)."""
        while True:
            with self._cond:
                while wait and not self._stopping and not len(self._queue):
                    self._idle = True
                    self._cond.wait()
                if self._stopping or not len(self._queue):
                    return None
                self._last_progress = time.monotonic()
                if self._idle:  # busy time starts now, for the throughput estimate
                    self._idle = False
                    self._rate_clock = self._last_progress
                batch = self._queue.next_batch()
            if batch is not None and batch.members:
                now = time.time_ns()
                for lane, _ in batch.members:
                    if lane.owner.started_ns is None:
                        lane.owner.started_ns = now
                seqs = [lane.owner.seqs[i] for lane, i in batch.members]
                return (batch, time.perf_counter()), seqs, batch.pooling_task

    def _finish(self, picked: tuple[ScheduledBatch[CoreRequest], float],
                outcome: BatchOutcome) -> None:
        batch, started = picked
        outputs = (list(outcome) if not isinstance(outcome, Exception)
                   else self._run_one_by_one(batch, outcome))
        requests = {lane.owner: None for lane, _ in batch.members}
        # The first input of each request that failed even when run alone (and the
        # LoRAError it raised, when its adapter was unloaded while it was queued).
        failed: dict[CoreRequest, tuple[int, LoRAError | None]] = {}
        for (lane, index), output in zip(batch.members, outputs, strict=True):
            if lane.owner.settled:
                continue
            if output is None or isinstance(output, LoRAError):
                failed.setdefault(lane.owner, (index, output))
                continue
            lane.owner.results[index] = output
            lane.owner.remaining -= 1
        self._last_progress = time.monotonic()
        seconds = time.perf_counter() - started
        # The observer (metrics) sees the batch before its requests are answered, so a
        # client that has its answer also finds the batch counted.
        if self.on_batch is not None:
            stats = BatchStats(batch.pooling_task, len(outputs), batch.num_tokens, seconds,
                               len(requests))
            try:
                self.on_batch(stats)
            except Exception:  # metrics must never take the worker down
                logger.exception("The batch observer failed")
        if failed:
            self._fail_requests(failed)
        for request in requests:
            if request.remaining == 0:
                request.settle(request.results)
        busy_until, self._rate_clock = self._rate_clock, time.monotonic()
        self._recent_tokens = 0.95 * self._recent_tokens + batch.num_tokens
        self._recent_seconds = 0.95 * self._recent_seconds + self._rate_clock - busy_until
        self._heap.maybe_trim()

    def _run_one_by_one(self, batch: ScheduledBatch[CoreRequest], error: Exception
                        ) -> list[torch.Tensor | LoRAError | None]:
        """The outputs of a batch that raised as a whole (one poisonous input, out of
        memory), each member run again alone: ``None`` where an input fails by itself,
        so only its request fails and every other request in the batch still succeeds;
        the LoRAError where its LoRA adapter is no longer loaded (the client's error).
        """
        seqs = [lane.owner.seqs[i] for lane, i in batch.members]
        if len(seqs) == 1:
            if isinstance(error, LoRAError):
                return [error]
            logger.error("The model failed on a sequence of %d tokens", seqs[0].cost,
                         exc_info=error)
            return [None]
        logger.error("A batch of %d sequences failed; running each alone", len(seqs),
                     exc_info=error)
        outputs: list[torch.Tensor | LoRAError | None] = []
        failed: set[CoreRequest] = set()
        for (lane, _), seq in zip(batch.members, seqs, strict=True):
            if lane.owner in failed or lane.owner.settled:  # spare the model
                outputs.append(None)
                continue
            try:
                (output,) = self.runner.execute([seq], batch.pooling_task)
            except LoRAError as exc:  # its adapter was unloaded while it was queued
                failed.add(lane.owner)
                output = exc
            except Exception as exc:
                logger.error("The model failed on a sequence of %d tokens alone: %s: %s",
                             seq.cost, type(exc).__name__, exc)
                failed.add(lane.owner)
                output = None
            self._last_progress = time.monotonic()
            outputs.append(output)
        return outputs

    def _fail_requests(self, failed: dict[CoreRequest, tuple[int, LoRAError | None]]
                       ) -> None:
        """Fail each request (the value: the index of its input that failed, and the
        LoRAError it raised, if that was why)."""
        with self._cond:
            for request in failed:
                self._queue.remove(request.lane)
        for request, (index, refusal) in failed.items():
            # The model's own message may hold internals; the client gets a plain one.
            # A LoRAError is the client's: its adapter is not loaded (a 400).
            request.settle(refusal if refusal is not None else BatchFailedError(
                f"The model failed on input {index} of this request."))

    def _fail_waiting(self, exc: BaseException) -> None:
        # Called with the lock held, on shutdown.
        for request in self._queue.clear():
            request.settle(exc)
