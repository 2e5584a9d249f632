"""The server's batch picker: shared token-budget batches, fair across requests."""

from __future__ import annotations

import pytest

from cenote.engine.request_queue import RequestQueue
from cenote.engine.scheduler import schedule_batches


def drain(queue: RequestQueue) -> list[list[tuple[str, int]]]:
    """Every batch the queue hands out, as (owner, sequence index) pairs."""
    batches = []
    while (batch := queue.next_batch()) is not None:
        batches.append([(lane.owner, i) for lane, i in batch.members])
    return batches


def test_a_lone_request_is_batched_like_the_offline_scheduler():
    lengths = [5, 40, 12, 33, 7, 7, 64, 3, 19, 25] * 7
    queue = RequestQueue(256)
    queue.add("big", "embed", lengths)
    picked = [[i for _, i in batch] for batch in drain(queue)]
    assert picked == schedule_batches(lengths, 256)


def test_a_small_request_behind_a_big_one_rides_in_the_next_batch():
    queue = RequestQueue(64)
    queue.add("big", "embed", [8] * 100)
    first = queue.next_batch()
    assert {lane.owner for lane, _ in first.members} == {"big"}
    queue.add("small", "embed", [8])
    second = queue.next_batch()
    assert [(lane.owner, i) for lane, i in second.members] == [("small", 0)]
    assert len(drain(queue)) > 5  # most of the big request was still to come


def test_backlog_runs_between_batches_of_new_requests():
    queue = RequestQueue(16)
    queue.add("big", "embed", [8] * 20)
    owners = [{lane.owner for lane, _ in queue.next_batch().members}]
    for k in range(4):  # a new one-text request arrives before every batch
        queue.add(f"new{k}", "embed", [8])
        owners.append({lane.owner for lane, _ in queue.next_batch().members})
    assert owners == [{"big"}, {"new0"}, {"big"}, {"new1", "new2"}, {"big"}]


def test_every_batch_fits_the_budget_unless_one_sequence_alone_exceeds_it():
    queue = RequestQueue(100)
    queue.add("a", "embed", [30, 10, 90, 5, 5, 60])
    queue.add("b", "embed", [150, 20, 20])
    queue.add("c", "embed", [1] * 40)
    seen = 0
    for batch in drain(queue):
        lengths = [{"a": [30, 10, 90, 5, 5, 60], "b": [150, 20, 20], "c": [1] * 40}[o][i]
                   for o, i in batch]
        seen += len(batch)
        assert len(lengths) * max(lengths) <= 100 or len(lengths) == 1
    assert seen == 6 + 3 + 40


def test_concurrent_requests_share_a_batch():
    queue = RequestQueue(1024)
    for name in "abcd":
        queue.add(name, "embed", [10])
    (batch,) = drain(queue)
    assert sorted(owner for owner, _ in batch) == ["a", "b", "c", "d"]


def test_each_request_gets_a_turn_in_round_robin():
    queue = RequestQueue(16)  # two 8-token sequences per batch
    queue.add("a", "embed", [8] * 4)
    queue.add("b", "embed", [8] * 4)
    batches = drain(queue)
    assert all(sorted(o for o, _ in batch) == ["a", "b"] for batch in batches)


def test_a_batch_holds_one_pooling_task():
    queue = RequestQueue(1024)
    queue.add("e1", "embed", [4, 4])
    queue.add("c1", "classify", [4])
    queue.add("e2", "embed", [4])
    first, second = drain(queue)
    assert sorted(o for o, _ in first) == ["e1", "e1", "e2"]
    assert second == [("c1", 0)]


def test_removing_a_request_drops_its_waiting_sequences():
    queue = RequestQueue(16)
    lane = queue.add("gone", "embed", [8] * 10)
    queue.add("kept", "embed", [8] * 2)
    queue.next_batch()
    queue.remove(lane)
    assert queue.num_waiting_seqs == 1
    assert queue.num_waiting_tokens == 8
    assert [o for batch in drain(queue) for o, _ in batch] == ["kept"]


def test_waiting_counts_follow_adds_and_batches():
    queue = RequestQueue(30)
    queue.add("a", "embed", [10, 10, 10])
    queue.add("b", "embed", [5])
    assert (queue.num_waiting_seqs, queue.num_waiting_tokens) == (4, 35)
    batch = queue.next_batch()  # a, b, a: three sequences of at most 10 tokens fit in 30
    assert (len(batch.members), batch.num_tokens) == (3, 25)
    assert (queue.num_waiting_seqs, queue.num_waiting_tokens) == (1, 10)
    drain(queue)
    assert (queue.num_waiting_seqs, queue.num_waiting_tokens) == (0, 0)


def test_clear_returns_the_requests_that_still_waited():
    queue = RequestQueue(8)
    queue.add("a", "embed", [8, 8])
    queue.add("b", "embed", [8])
    assert sorted(queue.clear()) == ["a", "b"]
    assert queue.next_batch() is None
    assert queue.num_waiting_seqs == 0


def test_budget_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        RequestQueue(0)
