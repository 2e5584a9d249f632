"""The server's front end to its engine: continuous batching across concurrent requests.

Requests are validated and turned into input records here, on a small thread pool
(short ones on the event loop itself); then an :class:`EngineClient` runs them: today
an :class:`~cenote.engine.core.EngineCore` on the model thread of this process, which
packs records from all clients into shared token-budget batches and runs them
through the same ``ModelRunner.execute`` as the offline API. Results come back in
input order.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from cenote.config import ModelConfig
from cenote.config.lora import LoRAOptions, LoRARequest
from cenote.engine.client import EngineClient, InProcessEngineClient
from cenote.engine.core import (  # noqa: F401  (the errors the server maps to HTTP)
    BatchFailedError,
    BatchStats,
    EngineCore,
    EngineStoppedError,
    QueueFullError,
)
from cenote.engine.data_parallel import DataParallelEngineClient
from cenote.engine.engine import PoolingEngine, request_outputs, warmup_records
from cenote.engine.lora import LoRARegistry, with_adapters
from cenote.engine.model_thread import ModelThread
from cenote.engine.timings import request_timings
from cenote.inputs.chat import render_chat
from cenote.inputs.prompts import Prompt, SequenceInput, check_unicode
from cenote.inputs.score_prompts import ScoreOptions
from cenote.inputs.tokenizer import ContextLengthError
from cenote.outputs import PoolingRequestOutput, ScoringRequestOutput
from cenote.params import PoolingParams
from cenote.pooling.compact import calibration_ranges, calibration_texts
from cenote.pooling.policy import PoolingPolicy
from cenote.tasks import pooling_task as pooling_task_named

logger = logging.getLogger(__name__)

# Requests up to this many characters (token ids count as 4) tokenise on the
# small-request thread: a few thousand characters take well under a millisecond.
_SMALL_REQUEST_CHARS = 16_384
# Up to this many, on the event loop itself: a sentence tokenises in ~35 us, less than
# the two thread hops (~0.2-0.3 ms on a server here) a trip to the small thread costs.
_INLINE_REQUEST_CHARS = 1_024


def _size_of(items: Sequence) -> int:
    """Characters in prompts or text pairs, to tell small requests from bulk ones."""
    size = 0
    for item in items:
        if isinstance(item, str):
            size += len(item)
        elif isinstance(item, dict) and "multi_modal_data" in item:
            size += _SMALL_REQUEST_CHARS  # an image: pre-processed on a thread, never inline
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


def _truncates(params: PoolingParams | None, truncate_prompt_tokens: int | None,
               auto_truncate: bool) -> bool:
    """Whether a request's tokenising truncates (which takes the tokenizer's lock)."""
    return auto_truncate or truncate_prompt_tokens is not None or (
        params is not None and params.truncate_prompt_tokens is not None)


class AsyncPoolingEngine:
    """Async front of a :class:`PoolingEngine` for many concurrent requests.

    ``start()`` launches the worker; ``shutdown()`` stops it and fails whatever
    still waits with :class:`EngineStoppedError`.

    ``max_queued_tokens`` and ``max_queue_seconds`` are the engine core's admission
    control (:class:`~cenote.engine.core.EngineCore`): a request it refuses raises
    :class:`QueueFullError`.
    """

    def __init__(
        self,
        engine: PoolingEngine,
        *,
        on_batch: Callable[[BatchStats], None] | None = None,
        model_thread: ModelThread | None = None,
        max_queued_tokens: int | None = None,
        max_queue_seconds: float | None = None,
        client: EngineClient | None = None,
    ) -> None:
        self.engine = engine
        # ``client``: engines elsewhere (data parallel); else the engine's own model here.
        self.client: EngineClient = client or InProcessEngineClient(
            engine.runner, model_thread or ModelThread(), engine.config.max_num_batched_tokens,
            on_batch=on_batch, max_queued_tokens=max_queued_tokens,
            max_queue_seconds=max_queue_seconds)
        if client is not None and on_batch is not None:
            client.on_batch = on_batch
        # Two tokenising threads: small requests never queue behind the tokenising
        # of a huge one, which would undo the fairness the batch picker gives them.
        self._small_pool = ThreadPoolExecutor(1, thread_name_prefix="cenote-tokenize")
        self._bulk_pool = ThreadPoolExecutor(1, thread_name_prefix="cenote-tokenize-bulk")
        self._ids = itertools.count()
        # The calibration texts' raw embeddings, for int8/uint8 ranges (made on first use).
        self._calibration: np.ndarray | None = None
        self._calibration_lock: asyncio.Lock | None = None

    @classmethod
    def from_config(cls, config: ModelConfig, data_parallel_size: int = 1,
                    lora: LoRAOptions | None = None, **kwargs: Any) -> AsyncPoolingEngine:
        """Load the model described by ``config`` on the thread that will run it, or,
        with ``data_parallel_size`` above 1, in that many engine processes (this process
        then only tokenises and routes: it loads the tokenizer, not the weights).
        ``lora``: the LoRA adapters it serves (one engine only)."""
        if data_parallel_size > 1 and lora is not None and lora.enabled:
            raise ValueError("--enable-lora runs with one engine; it cannot be combined with "
                             "--data-parallel-size above 1.")
        if data_parallel_size > 1:
            client = DataParallelEngineClient(
                config, data_parallel_size, max_queued_tokens=kwargs.pop("max_queued_tokens", None),
                max_queue_seconds=kwargs.pop("max_queue_seconds", None))
            width = client.load()
            try:
                engine = PoolingEngine(config, policy=PoolingPolicy(config, output_width=width))
            except BaseException:
                client.shutdown()
                raise
            return cls(engine, client=client, **kwargs)
        model_thread = ModelThread()
        try:
            engine = model_thread.submit(lambda: PoolingEngine(config, lora=lora)).result()
        except BaseException:
            model_thread.close()
            raise
        return cls(engine, model_thread=model_thread, **kwargs)

    @property
    def config(self) -> ModelConfig:
        return self.engine.config

    # ---- lifecycle -------------------------------------------------------

    def start(self) -> None:
        """Start the engine's batch loop."""
        self.client.start()

    def shutdown(self) -> None:
        """Stop after the current batch; fail everything still queued."""
        self.client.shutdown()
        for pool in (self._small_pool, self._bulk_pool):
            pool.shutdown(wait=False, cancel_futures=True)

    @property
    def on_batch(self) -> Callable[[BatchStats], None] | None:
        """Called with each executed batch's :class:`BatchStats` (metrics)."""
        return self.client.on_batch

    @on_batch.setter
    def on_batch(self, observer: Callable[[BatchStats], None] | None) -> None:
        self.client.on_batch = observer

    @property
    def is_running(self) -> bool:
        """True while the batch loop is alive and taking work."""
        return self.client.is_running

    @property
    def num_waiting_seqs(self) -> int:
        """Sequences queued and not yet in a batch."""
        return self.client.num_waiting_seqs

    @property
    def num_waiting_tokens(self) -> int:
        """Tokens queued and not yet in a batch."""
        return self.client.num_waiting_tokens

    @property
    def seconds_without_progress(self) -> float:
        """How long the engine has been busy without starting or finishing a batch (0
        while idle); a value that keeps growing means the model hangs."""
        return self.client.seconds_without_progress

    @property
    def num_engines(self) -> int:
        """Engines running batches (above 1 with data-parallel engine processes)."""
        return self.client.num_engines

    @property
    def num_alive(self) -> int:
        """Engines taking work now (fewer than ``num_engines`` while one restarts)."""
        return self.client.num_alive

    async def warmup(self) -> None:
        """Run a tiny request so the first client does not pay one-off kernel setup
        (an engine process warms its own model up before it takes work)."""
        seqs, task = await self._off_loop(warmup_records, self.engine, size=_SMALL_REQUEST_CHARS)
        await self.run(seqs, task)

    # ---- requests --------------------------------------------------------

    async def encode(
        self,
        prompts: Sequence[Prompt],
        pooling_task: str,
        params: PoolingParams | None = None,
        truncate_prompt_tokens: int | None = None,
        add_special_tokens: bool = True,
        prompt_name: str | None = None,
        lora_request: LoRARequest | None = None,
    ) -> list[PoolingRequestOutput]:
        """Like ``LLM.encode`` for one request; outputs in input order; through the LoRA
        adapter of ``lora_request`` when given.

        Validation errors (``ValueError``/``TypeError``, ``UnsupportedTaskError``)
        are raised before anything is queued.
        """
        self.client.check_admission()
        with _naming_operation(pooling_task_named(pooling_task).operation):
            seqs = await self._off_loop(self.engine.prepare, prompts, pooling_task, params,
                                        truncate_prompt_tokens, add_special_tokens, prompt_name,
                                        size=_size_of(prompts),
                                        locks=_truncates(params, truncate_prompt_tokens,
                                                       self.engine.config.auto_truncate))
        if lora_request is not None:
            seqs = with_adapters(seqs, [lora_request.lora_int_id] * len(seqs))
        data = await self.run(seqs, pooling_task)
        request_id = self._next_request_id()
        return request_outputs(seqs, data, lambda k: f"{request_id}-{k}")

    async def score(
        self,
        pairs: Sequence[tuple[str, str]],
        params: PoolingParams | None = None,
        truncate_prompt_tokens: int | None = None,
        operation: str = "score",
        options: ScoreOptions | None = None,
        lora_request: LoRARequest | None = None,
    ) -> list[ScoringRequestOutput]:
        """Like ``LLM.score`` for already-paired texts.

        Cross-encoders score each pair jointly; embedding models embed every
        distinct text once and return cosine similarities. ``operation`` names the
        request in a too-long input's error (vLLM's rerank says "embedding generation");
        ``options``: a chat template for the pairs and token limits per side.
        """
        self.client.check_admission()
        with _naming_operation(operation):
            job = await self._off_loop(self.engine.prepare_score, pairs, params,
                                       truncate_prompt_tokens, options, size=_size_of(pairs),
                                       locks=_truncates(params, truncate_prompt_tokens,
                                                       self.engine.config.auto_truncate))
        if lora_request is not None:
            job.seqs = with_adapters(job.seqs, [lora_request.lora_int_id] * len(job.seqs))
        data = await self.run(job.seqs, job.pooling_task)
        request_id = self._next_request_id()
        return job.finish(data, lambda k: f"{request_id}-{k}")

    async def int8_ranges(self, params: PoolingParams | None = None) -> np.ndarray:
        """``[2, dim]`` per-dimension ranges for int8/uint8 codes of embeddings made with
        ``params``: the calibration texts' embeddings, pooled once raw and cut and
        normalised here as ``params`` ask, so every later request maps the same way."""
        resolved = self.engine.policy.resolve_params("embed", params)
        if self._calibration is None:
            self._calibration_lock = self._calibration_lock or asyncio.Lock()
            async with self._calibration_lock:
                if self._calibration is None:
                    # Cut, if at all, as Sentence-Transformers cuts: keeping the first tokens.
                    raw = await self.encode(calibration_texts(), "embed",
                                            PoolingParams(normalize=False,
                                                          truncation_side="right"),
                                            truncate_prompt_tokens=-1)
                    self._calibration = torch.stack([o.outputs.data for o in raw]).numpy()
        vectors = torch.from_numpy(self._calibration)
        if resolved.dimensions is not None:
            vectors = vectors[:, :resolved.dimensions]
        if resolved.normalize:
            vectors = torch.nn.functional.normalize(vectors, p=2, dim=-1)
        return calibration_ranges(vectors.numpy())

    @property
    def loras(self) -> LoRARegistry:
        """The LoRA adapters this engine serves, by name."""
        return self.engine.loras

    async def load_lora(self, name: str, path: str, replace: bool = False) -> None:
        """Load the LoRA adapter at ``path`` as ``name`` (between batches), or with
        ``replace`` in place of the one of that name; LoRAError when it cannot be."""
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: self.engine.loras.load(name, path, replace))

    async def unload_lora(self, name: str) -> None:
        """Unload the LoRA adapter ``name``; LoRANotFoundError when none is loaded."""
        await asyncio.get_running_loop().run_in_executor(None, self.engine.loras.remove, name)

    async def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text`` (no check against ``max_model_len``: this is how users
        measure inputs; a text too long for any tokens limit to matter is refused)."""
        check_unicode(text, "The prompt")
        bound = self.engine.tokenizer.max_text_chars(chunked=True) or \
            self.engine.tokenizer.max_text_chars()
        if len(text) > bound:
            raise ValueError(f"The prompt has {len(text)} characters; this server tokenises at "
                             f"most {bound} per prompt (64 per token of the model's length "
                             "limit).")
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
        return await self._off_loop(
            render_chat, self.engine.tokenizer.hf, messages, chat_template=chat_template,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message,
            chat_template_kwargs=chat_template_kwargs,
            size=sum(len(str(m.get("content") or "")) for m in messages))

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
        """Queue prepared records and wait for their outputs (input order).

        If the caller is cancelled (timeout, client gone), the request's records that
        have not run yet are dropped from the queue. Raises :class:`QueueFullError`
        when admission control refuses the request.
        """
        if (timings := request_timings.get()) is not None:
            timings.mark_prepared()
        if not seqs:
            return []
        records, merge = self.engine.split(seqs, pooling_task)
        return merge(await self.client.run(records, pooling_task))

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
