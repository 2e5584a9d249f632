"""Batches run one ahead (cenote/engine/pipeline.py): the order of the steps where a
launch computes (CPU) and where it only queues (GPU), a failing step as the batch's
outcome, and requests settled once when a batch fails while the next is in flight.

The real MiniLM runs every batch; its steps are wrapped only to log their order.
"""

from __future__ import annotations

import threading

import pytest
import torch

from cenote.config import ModelConfig
from cenote.engine.core import BatchFailedError, CoreRequest, EngineCore
from cenote.engine.engine import PoolingEngine
from cenote.engine.model_thread import ModelThread
from cenote.engine.pipeline import run_one_ahead
from cenote.engine.runner import ModelRunner

BUDGET = 64
POISON = 4242


@pytest.fixture(scope="module")
def engine(minilm_path):
    config = ModelConfig.from_args(model=str(minilm_path), max_model_len=32,
                                   max_num_batched_tokens=BUDGET)
    return PoolingEngine(config)


def records(engine, count: int, length: int = 30, poisoned: tuple[int, ...] = ()):
    """``count`` token-id records of ``length`` tokens (two fill a 64-token batch);
    those at ``poisoned`` carry a token the wrapped model refuses."""
    prompts = [[101] + [1000 + 7 * i + j for j in range(length - 2)] + [102]
               for i in range(count)]
    for i in poisoned:
        prompts[i][1] = POISON
    return engine.prepare([{"prompt_token_ids": ids} for ids in prompts], "embed")


@pytest.fixture
def step_log(engine, monkeypatch):
    """The runner's steps, logged as (step, the first token id of the batch's first
    record after [CLS]), in the order they ran."""
    log: list[tuple[str, int]] = []
    runner = engine.runner
    prepare, launch, collect = runner.prepare, runner.launch, runner.collect

    def logged_prepare(seqs, pooling_task):
        log.append(("prepare", seqs[0].token_ids[1]))
        prepared = prepare(seqs, pooling_task)
        prepared.first = seqs[0].token_ids[1]
        return prepared

    def logged_launch(prepared):
        log.append(("launch", prepared.first))
        outputs = Tagged(launch(prepared))
        outputs.first = prepared.first
        return outputs

    def logged_collect(outputs):
        log.append(("collect", outputs.first))
        return collect(outputs)

    monkeypatch.setattr(runner, "prepare", logged_prepare)
    monkeypatch.setattr(runner, "launch", logged_launch)
    monkeypatch.setattr(runner, "collect", logged_collect)
    return log


class Tagged(list):
    """A batch's outputs, tagged with its first token id."""

    first: int


def run_logged(engine, seqs, log):
    done = []
    outputs = engine.run(seqs, "embed",
                         on_batch_done=lambda n: (log.append(("done", None)), done.append(n)))
    return outputs, done


def test_where_launch_computes_a_batch_is_handed_on_before_the_next_runs(engine, step_log):
    seqs = records(engine, 6)
    outputs, done = run_logged(engine, seqs, step_log)
    b = [seqs[i].token_ids[1] for i in (0, 2, 4)]  # each batch's first record
    assert step_log == [
        ("prepare", b[0]), ("launch", b[0]),
        ("prepare", b[1]), ("collect", b[0]), ("done", None), ("launch", b[1]),
        ("prepare", b[2]), ("collect", b[1]), ("done", None), ("launch", b[2]),
        ("collect", b[2]), ("done", None),
    ]
    assert done == [2, 2, 2]
    assert len(outputs) == 6


def test_where_launch_only_queues_the_next_batch_is_prepared_while_one_runs(
        engine, step_log, monkeypatch):
    monkeypatch.setattr(ModelRunner, "launches_async", property(lambda self: True))
    seqs = records(engine, 6)
    queued, _ = run_logged(engine, seqs, step_log)
    b = [seqs[i].token_ids[1] for i in (0, 2, 4)]
    assert step_log == [
        ("prepare", b[0]), ("launch", b[0]),
        ("prepare", b[1]), ("collect", b[0]), ("launch", b[1]), ("done", None),
        ("prepare", b[2]), ("collect", b[1]), ("launch", b[2]), ("done", None),
        ("collect", b[2]), ("done", None),
    ]
    monkeypatch.undo()
    computed = engine.run(seqs, "embed")
    for a, b_ in zip(queued, computed, strict=True):
        assert torch.equal(a, b_)


def test_outputs_come_back_in_input_order_as_each_record_alone(engine):
    seqs = records(engine, 5) + records(engine, 2, length=8)
    together = engine.run(seqs[::-1], "embed")[::-1]
    for seq, out in zip(seqs, together, strict=True):
        (alone,) = engine.runner.execute([seq], "embed")
        assert torch.allclose(out, alone, atol=1e-5)


def test_a_failing_step_is_its_batch_outcome_and_the_others_still_run(engine, monkeypatch):
    runner = engine.runner
    launch = runner.launch

    def launch_refusing_the_second(prepared):
        if prepared.batch.input_ids[1].item() == seqs[2].token_ids[1]:
            raise RuntimeError("no room on the device")
        return launch(prepared)

    monkeypatch.setattr(runner, "launch", launch_refusing_the_second)
    seqs = records(engine, 6)
    batches = iter([[0, 1], [2, 3], [4, 5]])
    outcomes = []

    def next_batch(wait):
        batch = next(batches, None)
        return None if batch is None else (batch, [seqs[i] for i in batch], "embed")

    run_one_ahead(runner, next_batch, lambda key, outcome: outcomes.append((key, outcome)))
    assert [key for key, _ in outcomes] == [[0, 1], [2, 3], [4, 5]]
    assert isinstance(outcomes[1][1], RuntimeError)
    assert all(len(outcome) == 2 for _, outcome in (outcomes[0], outcomes[2]))
    with pytest.raises(RuntimeError, match="no room"):  # offline, the error is raised
        engine.run(seqs, "embed")


def test_a_request_failing_while_its_next_batch_is_in_flight_is_settled_once(
        engine, monkeypatch):
    runner = engine.runner
    prepare = runner.prepare

    def prepare_refusing_poison(seqs, pooling_task):
        if any(POISON in s.token_ids for s in seqs):
            raise RuntimeError("poisoned")
        return prepare(seqs, pooling_task)

    monkeypatch.setattr(runner, "prepare", prepare_refusing_poison)
    outcomes, settled, served = [], threading.Event(), threading.Event()
    core = EngineCore(runner, ModelThread(), BUDGET)
    core.start()
    try:
        # Two records a batch, longest first: records 0 and 1 (32 and 31 tokens), then
        # 2 and 3 (31 each), ... The second batch is picked and prepared before the
        # first fails the request; it fails too, and must not fail it again.
        seqs = records(engine, 6, length=31, poisoned=(0, 2))
        seqs[0] = engine.prepare([{"prompt_token_ids": seqs[0].token_ids + [102]}],
                                 "embed")[0]
        request = CoreRequest(seqs, lambda outcome: (outcomes.append(outcome), settled.set()))
        core.submit(request, "embed")
        assert settled.wait(60)
        after = CoreRequest(records(engine, 1),
                            lambda outcome: (outcomes.append(outcome), served.set()))
        core.submit(after, "embed")
        assert served.wait(60)
    finally:
        core.shutdown()
    failed, answer = outcomes  # the failed request was settled once, not again
    assert isinstance(failed, BatchFailedError)
    assert "input 0" in str(failed)
    assert answer[0].shape == (384,)
