"""The server's async engine: shared batches, fairness, failures and cancellation.

The model's batch function is wrapped so a test can see every batch the worker
runs and hold the first one, which makes the queue's state deterministic
without any timing.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
import torch.nn.functional as F

from cenote.config import ModelConfig
from cenote.engine.async_engine import AsyncPoolingEngine, BatchFailedError, EngineStoppedError
from cenote.engine.engine import PoolingEngine, UnsupportedTaskError
from cenote.inputs.tokenizer import Truncation

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Embeddings map sentences to vectors.",
    "A cat sat on the mat.",
    "Stock markets fell sharply on Monday.",
    "Paris is the capital of France.",
    "Rain is expected later this week.",
    "He plays the violin every evening.",
    "Photosynthesis turns light into chemical energy.",
]


class RecordingRunner:
    """Wraps ``runner.prepare``, the first step of every batch (and of each input run
    alone): records batches, can hold the first, can fail."""

    def __init__(self, prepare, hold_first: bool = False, poison: int | None = None) -> None:
        self.prepare = prepare
        self.poison = poison
        self.batches: list[list[tuple[int, ...]]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        if not hold_first:
            self.release.set()

    def __call__(self, seqs, pooling_task):
        self.batches.append([tuple(s.token_ids) for s in seqs])
        self.entered.set()
        self.release.wait(60)
        if self.poison is not None and any(self.poison in s.token_ids for s in seqs):
            raise RuntimeError("poisoned batch")
        return self.prepare(seqs, pooling_task)


@pytest.fixture
def engine(minilm_bf16):
    engine = AsyncPoolingEngine(minilm_bf16.engine)
    engine.start()
    yield engine
    engine.shutdown()


@pytest.fixture(scope="module")
def small_budget_engine(minilm_path):
    """MiniLM with 64-token batches, so a few dozen texts span many batches."""
    config = ModelConfig.from_args(model=str(minilm_path), max_model_len=32,
                                   max_num_batched_tokens=64)
    return PoolingEngine(config)


def record(monkeypatch, engine: AsyncPoolingEngine, **kwargs) -> RecordingRunner:
    recorder = RecordingRunner(engine.engine.runner.prepare, **kwargs)
    monkeypatch.setattr(engine.engine.runner, "prepare", recorder)
    return recorder


async def wait_until(condition) -> None:
    async def poll():
        while not condition():
            await asyncio.sleep(0.001)
    await asyncio.wait_for(poll(), 30)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a, b, dim=0).item()


def test_a_lone_request_gives_exactly_the_offline_outputs(engine, minilm_bf16):
    outputs = asyncio.run(engine.encode(TEXTS, "embed"))
    offline = minilm_bf16.embed(TEXTS, use_tqdm=False)
    for out, ref in zip(outputs, offline, strict=True):
        assert out.prompt_token_ids == ref.prompt_token_ids
        assert torch.equal(out.outputs.data, torch.tensor(ref.outputs.embedding))


def test_concurrent_requests_share_one_batch_and_each_gets_its_own_output(
        engine, minilm_bf16, monkeypatch):
    recorder = record(monkeypatch, engine, hold_first=True)

    async def scenario():
        blocker = asyncio.ensure_future(engine.encode(["Hold the worker."], "embed"))
        await asyncio.to_thread(recorder.entered.wait, 30)
        clients = [asyncio.ensure_future(engine.encode([t], "embed")) for t in TEXTS]
        await wait_until(lambda: engine.num_waiting_seqs == len(TEXTS))
        recorder.release.set()
        await blocker
        return await asyncio.gather(*clients)

    results = asyncio.run(scenario())
    assert len(recorder.batches) == 2
    assert len(recorder.batches[1]) == len(TEXTS)  # all eight clients in one batch
    alone = [torch.tensor(o.outputs.embedding)
             for o in minilm_bf16.embed(TEXTS, use_tqdm=False)]
    for k, (out,) in enumerate(results):
        similarities = [cosine(out.outputs.data, ref) for ref in alone]
        assert similarities[k] >= 0.9999
        assert max(range(len(alone)), key=similarities.__getitem__) == k


def test_a_small_request_behind_a_big_one_runs_right_after_the_running_batch(
        small_budget_engine, monkeypatch):
    engine = AsyncPoolingEngine(small_budget_engine)
    recorder = record(monkeypatch, engine, hold_first=True)
    big = [f"Sentence number {i} of the big request." for i in range(40)]
    engine.start()
    try:
        async def scenario():
            big_request = asyncio.ensure_future(engine.encode(big, "embed"))
            await asyncio.to_thread(recorder.entered.wait, 30)
            small_request = asyncio.ensure_future(engine.encode(["Just one."], "embed"))
            await wait_until(lambda: engine.num_waiting_seqs == len(big) - len(
                recorder.batches[0]) + 1)
            recorder.release.set()
            return await asyncio.gather(big_request, small_request)

        big_out, (small_out,) = asyncio.run(scenario())
    finally:
        engine.shutdown()
    small_ids = tuple(small_out.prompt_token_ids)
    assert recorder.batches[1] == [small_ids]  # right after the running batch, on its own
    assert len(recorder.batches) > 3  # the big request still had batches to run after it
    assert len(big_out) == len(big)


def test_a_failing_batch_fails_its_request_and_the_worker_keeps_serving(engine, monkeypatch):
    poison = 4242
    record(monkeypatch, engine, poison=poison)
    with pytest.raises(BatchFailedError, match="failed"):
        asyncio.run(engine.encode([{"prompt_token_ids": [101, poison, 102]}], "embed"))
    assert engine.is_running
    (out,) = asyncio.run(engine.encode(["Still alive."], "embed"))
    assert out.outputs.data.shape == (384,)


def test_a_cancelled_request_leaves_the_queue(engine, monkeypatch):
    recorder = record(monkeypatch, engine, hold_first=True)

    async def scenario():
        blocker = asyncio.ensure_future(engine.encode(["Hold the worker."], "embed"))
        await asyncio.to_thread(recorder.entered.wait, 30)
        waiting = asyncio.ensure_future(engine.encode(TEXTS, "embed"))
        await wait_until(lambda: engine.num_waiting_seqs == len(TEXTS))
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        left = engine.num_waiting_seqs, engine.num_waiting_tokens
        recorder.release.set()
        await blocker
        return left

    assert asyncio.run(scenario()) == (0, 0)
    assert len(recorder.batches) == 1  # the cancelled texts never ran


def test_shutdown_fails_the_requests_still_waiting(minilm_bf16, monkeypatch):
    engine = AsyncPoolingEngine(minilm_bf16.engine)
    recorder = record(monkeypatch, engine, hold_first=True)
    engine.start()

    async def scenario():
        running = asyncio.ensure_future(engine.encode(["Hold the worker."], "embed"))
        await asyncio.to_thread(recorder.entered.wait, 30)
        waiting = asyncio.ensure_future(engine.encode(["Never run."], "embed"))
        await wait_until(lambda: engine.num_waiting_seqs == 1)
        stopping = asyncio.ensure_future(asyncio.to_thread(engine.shutdown))
        await wait_until(lambda: not engine.is_running)
        recorder.release.set()
        await stopping
        return await asyncio.gather(running, waiting, return_exceptions=True)

    finished, refused = asyncio.run(scenario())
    assert finished[0].outputs.data.shape == (384,)
    assert isinstance(refused, EngineStoppedError)


def test_the_model_is_loaded_on_the_thread_that_runs_its_batches(minilm_bf16, monkeypatch):
    from cenote.engine import async_engine

    threads = {}

    def load(config, **kwargs):
        threads["load"] = threading.current_thread()
        return minilm_bf16.engine

    monkeypatch.setattr(async_engine, "PoolingEngine", load)
    launch = minilm_bf16.engine.runner.launch

    def run(prepared):
        threads["run"] = threading.current_thread()
        return launch(prepared)

    monkeypatch.setattr(minilm_bf16.engine.runner, "launch", run)
    engine = AsyncPoolingEngine.from_config(minilm_bf16.config)
    engine.start()
    try:
        asyncio.run(engine.encode(["Which thread?"], "embed"))
    finally:
        engine.shutdown()
    assert threads["load"] is threads["run"]
    assert threads["run"] is not threading.main_thread()


def test_a_stopped_engine_refuses_new_requests(minilm_bf16):
    engine = AsyncPoolingEngine(minilm_bf16.engine)
    with pytest.raises(EngineStoppedError):
        asyncio.run(engine.encode(["Not started."], "embed"))


def test_invalid_requests_raise_before_anything_is_queued(engine):
    with pytest.raises(ValueError, match="empty string"):
        asyncio.run(engine.encode(["fine", ""], "embed"))
    with pytest.raises(UnsupportedTaskError, match="Classification API"):
        asyncio.run(engine.encode(["fine"], "classify"))
    assert engine.num_waiting_seqs == 0


def test_tokenisation_runs_off_the_event_loop_unless_short(engine, monkeypatch):
    # A sentence tokenises faster on the loop than a thread hop takes; anything longer,
    # or anything truncated (truncating encodes share a lock), goes to a thread.
    threads = []
    prepare = engine.engine.prepare

    def spy(*args, **kwargs):
        threads.append(threading.current_thread())
        return prepare(*args, **kwargs)

    monkeypatch.setattr(engine.engine, "prepare", spy)

    async def scenario():
        await engine.encode(["Where am I tokenised?"], "embed")
        await engine.encode(["A longer text. " * 100], "embed", truncate_prompt_tokens=-1)
        await engine.encode(["Where am I tokenised?"], "embed", truncate_prompt_tokens=8)
        return threading.current_thread()

    loop_thread = asyncio.run(scenario())
    assert [t is loop_thread for t in threads] == [True, False, False]


def test_a_small_request_is_tokenised_while_a_huge_one_still_is(engine, monkeypatch):
    release = threading.Event()
    prepare = engine.engine.prepare

    def slow_for_big(prompts, *args, **kwargs):
        if len(prompts) > 100:
            release.wait(60)
        return prepare(prompts, *args, **kwargs)

    monkeypatch.setattr(engine.engine, "prepare", slow_for_big)
    huge = [f"Paragraph {i} is long enough to count as bulk work." for i in range(1000)]

    async def scenario():
        big = asyncio.ensure_future(engine.encode(huge, "embed"))
        (small,) = await asyncio.wait_for(engine.encode(["Quick one."], "embed"), 30)
        still_tokenising = not big.done()
        release.set()
        return small, still_tokenising, await big

    small, still_tokenising, big = asyncio.run(scenario())
    assert still_tokenising and small.outputs.data.shape == (384,)
    assert len(big) == len(huge)


def test_untruncated_tokenising_does_not_wait_for_a_truncating_one(minilm_bf16):
    tokenizer = minilm_bf16.engine.tokenizer
    pool = ThreadPoolExecutor(1)
    tokenizer._lock.acquire()  # as if a long truncating encode were running
    try:
        (prompt,) = pool.submit(tokenizer.encode_prompts, ["Not held up."]).result(10)
    finally:
        tokenizer._lock.release()
        pool.shutdown()
    assert prompt.token_ids == minilm_bf16.get_tokenizer()("Not held up.")["input_ids"]


def test_truncation_keeps_the_last_tokens_and_does_not_leak(minilm_bf16):
    tokenizer = minilm_bf16.engine.tokenizer
    text = "one two three four five six seven eight"
    (full,) = tokenizer.encode_prompts([text])
    (cut,) = tokenizer.encode_prompts([text], Truncation(4))
    (again,) = tokenizer.encode_prompts([text])
    assert len(cut.token_ids) == 4 and cut.token_ids[-2] == full.token_ids[-2]
    assert again.token_ids == full.token_ids


def test_embedding_model_scores_are_cosine_similarities(engine, minilm_bf16):
    pairs = [("A cat sat on the mat.", "A kitten rested on the rug."),
             ("A cat sat on the mat.", "Stock markets fell sharply on Monday.")]
    outputs = asyncio.run(engine.score(pairs))
    offline = minilm_bf16.score([a for a, _ in pairs], [b for _, b in pairs], use_tqdm=False)
    assert [o.outputs.score for o in outputs] == pytest.approx(
        [o.outputs.score for o in offline], abs=1e-4)
    assert outputs[0].outputs.score > outputs[1].outputs.score


def test_batch_observer_sees_every_batch(engine):
    seen = []
    engine.on_batch = seen.append
    asyncio.run(engine.encode(TEXTS, "embed"))
    assert sum(s.num_seqs for s in seen) == len(TEXTS)
    assert all(s.pooling_task == "embed" and s.num_tokens > 0 for s in seen)


def test_warmup_fits_however_small_max_model_len_is(minilm_path):
    # The server warms up before its first request; a 12-token sentence must not stop
    # a model served with --max-model-len 4 from starting.
    engine = AsyncPoolingEngine(PoolingEngine(ModelConfig.from_args(
        model=str(minilm_path), dtype="float32", max_model_len=4)))
    engine.start()
    try:
        asyncio.run(engine.warmup())
    finally:
        engine.shutdown()
