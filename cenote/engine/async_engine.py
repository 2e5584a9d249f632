"""The server's engine: continuous batching across concurrent requests.

One worker thread owns the model. Requests are validated and tokenised on a
small thread pool (short ones on the event loop itself), then their sequences wait in a
:class:`~cenote.engine.request_queue.RequestQueue`, which packs sequences from
all clients into shared token-budget batches. Each batch runs through the same
``ModelRunner.execute`` as the offline API; results go back to each request's
asyncio future, in input order.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from cenote.config import ModelConfig
from cenote.engine.engine import PoolingEngine, cosine_scores, score_texts
from cenote.engine.memory import HeapTrimmer
from cenote.engine.request_queue import Lane, RequestQueue, ScheduledBatch
from cenote.engine.runner import SequenceInput
from cenote.engine.tokenizer import ContextLengthError, Prompt, check_unicode
from cenote.outputs import PoolingOutput, PoolingRequestOutput, ScoringRequestOutput
from cenote.params import PoolingParams

logger = logging.getLogger(__name__)

# Requests up to this many characters (token ids count as 4) tokenise on the
# small-request thread: a few thousand characters take well under a millisecond.
_SMALL_REQUEST_CHARS = 16_384
# Up to this many, on the event loop itself: a sentence tokenises in ~35 us, less than
# the two thread hops (~0.2-0.3 ms on a server here) a trip to the small thread costs.
_INLINE_REQUEST_CHARS = 1_024


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


class EngineStoppedError(RuntimeError):
    """The engine is shutting down or its worker has died; no new work is taken."""


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


@dataclass(eq=False)
class _Request:
    """A request in flight: its sequences, its results so far, and its future."""

    seqs: list[SequenceInput]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    results: list[torch.Tensor | None] = field(init=False)
    remaining: int = field(init=False)
    lane: Lane | None = None

    def __post_init__(self) -> None:
        self.results = [None] * len(self.seqs)
        self.remaining = len(self.seqs)

    def resolve(self, value: list[torch.Tensor] | BaseException) -> None:
        """Hand the outcome to the event loop (called from the worker thread)."""
        self.loop.call_soon_threadsafe(_settle, self.future, value)


def _size_of(items: Sequence) -> int:
    """Characters in prompts or text pairs, to tell small requests from bulk ones."""
    size = 0
    for item in items:
        if isinstance(item, str):
            size += len(item)
        elif isinstance(item, dict):
            ids = item.get("prompt_token_ids")
            size += 4 * len(ids) if isinstance(ids, (list, tuple)) else 0
        elif isinstance(item, (tuple, list)):
            size += _size_of(item)
    return size


@contextlib.contextmanager
def _naming_operation(operation: str) -> Iterator[None]:
    """Say what a too-long input was for in its error, as vLLM's server does."""
    try:
        yield
    except ContextLengthError as exc:
        exc.operation = operation
        raise


def _truncates(params: PoolingParams | None, truncate_prompt_tokens: int | None) -> bool:
    """Whether a request's tokenising truncates (which takes the tokenizer's lock)."""
    return truncate_prompt_tokens is not None or (
        params is not None and params.truncate_prompt_tokens is not None)


def _settle(future: asyncio.Future, value: list[torch.Tensor] | BaseException) -> None:
    # The awaiting side may have been cancelled (timeout, disconnect) meanwhile.
    if future.done():
        return
    if isinstance(value, BaseException):
        future.set_exception(value)
    else:
        future.set_result(value)


class AsyncPoolingEngine:
    """Async front of a :class:`PoolingEngine` for many concurrent requests.

    ``start()`` launches the worker; ``shutdown()`` stops it and fails whatever
    still waits with :class:`EngineStoppedError`.

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
        engine: PoolingEngine,
        *,
        on_batch: Callable[[BatchStats], None] | None = None,
        model_thread: ModelThread | None = None,
        max_queued_tokens: int | None = None,
        max_queue_seconds: float | None = None,
    ) -> None:
        self.engine = engine
        self.on_batch = on_batch
        self.max_queued_tokens = max_queued_tokens
        self.max_queue_seconds = max_queue_seconds
        self._model_thread = model_thread or ModelThread()
        self._heap = HeapTrimmer()  # keeps a long-running server's RSS from creeping up
        self._queue: RequestQueue[_Request] = RequestQueue(engine.config.max_num_batched_tokens)
        self._cond = threading.Condition()
        self._stopping = False
        self._worker: Future[None] | None = None
        # Two tokenising threads: small requests never queue behind the tokenising
        # of a huge one, which would undo the fairness the batch picker gives them.
        self._small_pool = ThreadPoolExecutor(1, thread_name_prefix="cenote-tokenize")
        self._bulk_pool = ThreadPoolExecutor(1, thread_name_prefix="cenote-tokenize-bulk")
        self._ids = itertools.count()
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

    @classmethod
    def from_config(cls, config: ModelConfig, **kwargs: Any) -> AsyncPoolingEngine:
        """Load the model described by ``config`` on the thread that will run it."""
        model_thread = ModelThread()
        try:
            engine = model_thread.submit(lambda: PoolingEngine(config)).result()
        except BaseException:
            model_thread.close()
            raise
        return cls(engine, model_thread=model_thread, **kwargs)

    @property
    def config(self) -> ModelConfig:
        return self.engine.config

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
        for pool in (self._small_pool, self._bulk_pool):
            pool.shutdown(wait=False, cancel_futures=True)

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

    async def warmup(self) -> None:
        """Run a tiny request so the first client does not pay one-off kernel setup."""
        task = {"embed": "embed", "classify": "classify", "reward": "encode"}[self.config.task]
        # Cut to max_model_len (-1), however small it was set.
        await self.encode(["Warm-up.", "A second, slightly longer warm-up sentence."], task,
                          truncate_prompt_tokens=-1)

    # ---- requests --------------------------------------------------------

    async def encode(
        self,
        prompts: Sequence[Prompt],
        pooling_task: str,
        params: PoolingParams | None = None,
        truncate_prompt_tokens: int | None = None,
        add_special_tokens: bool = True,
    ) -> list[PoolingRequestOutput]:
        """Like ``LLM.encode`` for one request; outputs in input order.

        Validation errors (``ValueError``/``TypeError``, ``UnsupportedTaskError``)
        are raised before anything is queued.
        """
        self._check_admission()
        with _naming_operation("classification" if pooling_task == "classify"
                               else "embedding generation"):
            seqs = await self._off_loop(self.engine.prepare, prompts, pooling_task, params,
                                        truncate_prompt_tokens, add_special_tokens,
                                        size=_size_of(prompts),
                                        locks=_truncates(params, truncate_prompt_tokens))
        data = await self.run(seqs, pooling_task)
        return self._outputs(seqs, data)

    async def score(
        self,
        pairs: Sequence[tuple[str, str]],
        params: PoolingParams | None = None,
        truncate_prompt_tokens: int | None = None,
        operation: str = "score",
    ) -> list[ScoringRequestOutput]:
        """Like ``LLM.score`` for already-paired texts.

        Cross-encoders score each pair jointly; embedding models embed every
        distinct text once and return cosine similarities. ``operation`` names the
        request in a too-long input's error (vLLM's rerank says "embedding generation").
        """
        self._check_admission()
        if self.config.task == "classify":
            with _naming_operation(operation):
                seqs = await self._off_loop(self.engine.prepare_pairs, pairs, params,
                                            truncate_prompt_tokens, size=_size_of(pairs),
                                            locks=_truncates(params, truncate_prompt_tokens))
            data = await self.run(seqs, "score")
            return [ScoringRequestOutput.from_base(o) for o in self._outputs(seqs, data)]
        # Embedding models score by cosine; any other task (reward) has no Score API.
        self.engine.check_task("embed" if self.config.task == "embed" else "score")
        texts = score_texts(pairs)
        with _naming_operation(operation):
            seqs = await self._off_loop(self.engine.prepare, texts, "embed", params,
                                        truncate_prompt_tokens, size=_size_of(texts),
                                        locks=_truncates(params, truncate_prompt_tokens))
        vectors = await self.run(seqs, "embed")
        request_id = self._next_request_id()
        return cosine_scores(pairs, texts, seqs, vectors, lambda k: f"{request_id}-{k}")

    async def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text`` (no length check: this is how users measure inputs)."""
        check_unicode(text, "The prompt")
        hf = self.engine.tokenizer.hf
        encoded = await self._off_loop(hf, text, add_special_tokens=add_special_tokens,
                                       size=len(text))
        return list(encoded["input_ids"])

    async def render_chat(self, messages: list[dict[str, Any]], *,
                          chat_template: str | None = None,
                          add_generation_prompt: bool = False,
                          continue_final_message: bool = False,
                          chat_template_kwargs: dict[str, Any] | None = None) -> str:
        """``messages`` as text through the model's chat template (or ``chat_template``);
        ``ValueError`` when there is none or it fails on them."""
        hf = self.engine.tokenizer.hf
        if chat_template is None and not getattr(hf, "chat_template", None):
            raise ValueError("This model's tokenizer has no chat template; send input "
                             "instead of messages, or a chat_template.")
        for i, message in enumerate(messages):
            if isinstance(message.get("content"), str):
                check_unicode(message["content"], f"messages[{i}].content")

        # chat_template_kwargs may set the two flags too (it wins), never the call's own.
        options = {"add_generation_prompt": add_generation_prompt,
                   "continue_final_message": continue_final_message,
                   **{k: v for k, v in (chat_template_kwargs or {}).items()
                      if k not in ("conversation", "chat_template", "tokenize")}}

        def render() -> str:
            try:
                return hf.apply_chat_template(messages, chat_template=chat_template,
                                              tokenize=False, **options)
            except Exception as exc:  # jinja's errors, or the template's own raise
                raise ValueError(f"The chat template failed on these messages: "
                                 f"{type(exc).__name__}: {exc}") from None

        return await self._off_loop(render, size=sum(len(str(m.get("content") or ""))
                                                     for m in messages))

    async def token_strings(self, token_ids: list[int]) -> list[str]:
        """The vocabulary entry of each token id."""
        return await self._off_loop(self.engine.tokenizer.hf.convert_ids_to_tokens, token_ids,
                                    size=4 * len(token_ids))

    async def detokenize(self, token_ids: list[int]) -> str:
        """Text of ``token_ids``; ids outside the vocabulary raise ``ValueError``."""
        tokenizer = self.engine.tokenizer
        if token_ids:
            tokenizer.validate_token_ids(token_ids, 0)
        return await self._off_loop(tokenizer.decode, token_ids, size=4 * len(token_ids))

    async def run(self, seqs: list[SequenceInput], pooling_task: str) -> list[torch.Tensor]:
        """Queue prepared sequences and wait for their outputs (input order).

        If the caller is cancelled (timeout, client gone), the request's
        sequences that have not run yet are dropped from the queue. Raises
        :class:`QueueFullError` when admission control refuses the request.
        """
        if not seqs:
            return []
        loop = asyncio.get_running_loop()
        request = _Request(seqs, loop.create_future(), loop)
        lengths = [len(s.token_ids) for s in seqs]
        with self._cond:
            if not self.is_running:
                raise EngineStoppedError("The engine is not running.")
            # Checked again: the queue may have filled while this request was tokenised.
            self._check_admission(sum(lengths))
            request.lane = self._queue.add(request, pooling_task, lengths)
            self._cond.notify()
        try:
            return await request.future
        except asyncio.CancelledError:
            with self._cond:
                self._queue.remove(request.lane)
            raise

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
        while True:
            with self._cond:
                while not self._stopping and not len(self._queue):
                    self._idle = True
                    self._cond.wait()
                self._last_progress = time.monotonic()
                if self._idle:  # busy time starts now, for the throughput estimate
                    self._idle = False
                    self._rate_clock = self._last_progress
                if self._stopping:
                    self._fail_waiting(EngineStoppedError("The engine is shutting down."))
                    return
                batch = self._queue.next_batch()
            if batch is not None and batch.members:
                self._execute(batch)
                self._heap.maybe_trim()

    def _execute(self, batch: ScheduledBatch[_Request]) -> None:
        started = time.perf_counter()
        outputs = self._run_isolating_failures(batch)
        requests = {lane.owner: None for lane, _ in batch.members}
        # The first input of each request that failed even when run alone.
        failed: dict[_Request, int] = {}
        for (lane, index), output in zip(batch.members, outputs, strict=True):
            if output is None:
                failed.setdefault(lane.owner, index)
                continue
            lane.owner.results[index] = output
            lane.owner.remaining -= 1
        self._last_progress = time.monotonic()
        if failed:
            self._fail_requests(failed)
        for request in requests:
            if request.remaining == 0 and request not in failed:
                request.resolve(request.results)
        seconds = time.perf_counter() - started
        busy_until, self._rate_clock = self._rate_clock, time.monotonic()
        self._recent_tokens = 0.95 * self._recent_tokens + batch.num_tokens
        self._recent_seconds = 0.95 * self._recent_seconds + self._rate_clock - busy_until
        if self.on_batch is not None:
            stats = BatchStats(batch.pooling_task, len(outputs), batch.num_tokens, seconds,
                               len(requests))
            try:
                self.on_batch(stats)
            except Exception:  # metrics must never take the worker down
                logger.exception("The batch observer failed")

    def _run_isolating_failures(
        self, batch: ScheduledBatch[_Request]
    ) -> list[torch.Tensor | None]:
        """The batch's outputs in member order; ``None`` where an input made the model fail.

        When the batch as a whole raises (one poisonous input, out of memory),
        each member runs again alone, so only the inputs that fail by themselves
        fail their requests and every other request in the batch still succeeds.
        """
        seqs = [lane.owner.seqs[i] for lane, i in batch.members]
        try:
            outputs = self.engine.runner.execute(seqs, batch.pooling_task)
            if len(outputs) != len(seqs):
                raise RuntimeError(f"{len(outputs)} outputs for {len(seqs)} sequences")
            return list(outputs)
        except Exception:  # a bad batch must never take the worker down
            if len(seqs) == 1:
                logger.exception("The model failed on a sequence of %d tokens",
                                 len(seqs[0].token_ids))
                return [None]
            logger.exception("A batch of %d sequences failed; running each alone", len(seqs))
        outputs: list[torch.Tensor | None] = []
        failed: set[_Request] = set()
        for (lane, _), seq in zip(batch.members, seqs, strict=True):
            if lane.owner in failed:  # its request has failed already: spare the model
                outputs.append(None)
                continue
            try:
                (output,) = self.engine.runner.execute([seq], batch.pooling_task)
            except Exception as exc:
                logger.error("The model failed on a sequence of %d tokens alone: %s: %s",
                             len(seq.token_ids), type(exc).__name__, exc)
                failed.add(lane.owner)
                output = None
            self._last_progress = time.monotonic()
            outputs.append(output)
        return outputs

    def _fail_requests(self, failed: dict[_Request, int]) -> None:
        """Fail each request (the value: the index of its input that failed)."""
        with self._cond:
            for request in failed:
                self._queue.remove(request.lane)
        for request, index in failed.items():
            # The model's own message may hold internals; the client gets a plain one.
            request.resolve(BatchFailedError(
                f"The model failed on input {index} of this request."))

    def _check_admission(self, num_tokens: int = 0) -> None:
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

    def _fail_waiting(self, exc: BaseException) -> None:
        # Called with the lock held, on shutdown.
        for request in self._queue.clear():
            request.resolve(exc)

    # ---- helpers ---------------------------------------------------------

    async def _off_loop(self, fn, *args, size: int = 0, locks: bool = False, **kwargs):
        """Run ``fn`` on a tokenising thread; ``size`` (characters) picks which one, and
        a request of at most ``_INLINE_REQUEST_CHARS`` runs right here, unless ``fn``
        ``locks`` (truncating encodes share one lock: the event loop must never wait on
        a long encode elsewhere)."""
        if size <= _INLINE_REQUEST_CHARS and not locks:
            return fn(*args, **kwargs)
        pool = self._small_pool if size <= _SMALL_REQUEST_CHARS else self._bulk_pool
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(pool, lambda: fn(*args, **kwargs))

    def _next_request_id(self) -> str:
        return f"{uuid.uuid4().hex[:16]}-{next(self._ids)}"

    def _outputs(self, seqs: list[SequenceInput],
                 data: list[torch.Tensor]) -> list[PoolingRequestOutput]:
        request_id = self._next_request_id()
        return [PoolingRequestOutput(f"{request_id}-{k}", PoolingOutput(d), s.token_ids)
                for k, (s, d) in enumerate(zip(seqs, data, strict=True))]
