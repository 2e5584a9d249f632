"""The server's waiting room: sequences from many requests, picked into shared batches.

Each request's sequences wait in their own lane, longest first (as the offline
scheduler orders them, so attention pads little). A batch is filled round-robin
across the lanes of one pooling task, one sequence per lane per round, under
the same padded-token budget as :func:`cenote.engine.scheduler.schedule_batches`.
After every batch the lane that led it moves to the back of the line.

A request that has not run yet is served before any backlog, in a batch with
other new requests only, and backlog batches alternate with such batches. So a
request with thousands of inputs is cut into batches that interleave with
everybody else's, and a one-text request that arrives behind it waits for the
batch already running and then runs at once, instead of waiting for the whole
big request.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(eq=False)
class Lane(Generic[T]):
    """The waiting sequences of one request.

    ``owner`` is whatever the caller uses to route results back (the async
    engine's request record); the queue never looks inside it.
    """

    owner: T
    pooling_task: str
    lengths: Sequence[int]
    waiting: deque[int] = field(init=False)
    waiting_tokens: int = field(init=False)
    started: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.waiting = deque(sorted(range(len(self.lengths)), key=lambda i: -self.lengths[i]))
        self.waiting_tokens = sum(self.lengths)


@dataclass
class ScheduledBatch(Generic[T]):
    """One batch to run: ``members[k] = (lane, index of the sequence in its request)``."""

    pooling_task: str
    members: list[tuple[Lane[T], int]]

    @property
    def num_tokens(self) -> int:
        return sum(lane.lengths[i] for lane, i in self.members)


class RequestQueue(Generic[T]):
    """Lanes of waiting sequences and the fair, token-budgeted batch picker.

    Not thread-safe: the async engine calls it under its own lock.
    """

    def __init__(self, max_num_batched_tokens: int) -> None:
        if max_num_batched_tokens < 1:
            raise ValueError("max_num_batched_tokens must be positive.")
        self.max_num_batched_tokens = max_num_batched_tokens
        self._lanes: deque[Lane[T]] = deque()
        # True when the last batch served fresh requests while backlog waited.
        self._backlog_skipped = False
        self.num_waiting_seqs = 0
        self.num_waiting_tokens = 0

    def __len__(self) -> int:
        return len(self._lanes)

    def add(self, owner: T, pooling_task: str, lengths: Sequence[int]) -> Lane[T]:
        """Queue a request's sequences (token counts given) at the back of the line."""
        lane = Lane(owner, pooling_task, lengths)
        if lane.waiting:
            self._lanes.append(lane)
            self.num_waiting_seqs += len(lane.waiting)
            self.num_waiting_tokens += lane.waiting_tokens
        return lane

    def remove(self, lane: Lane[T]) -> None:
        """Drop whatever of this request has not been scheduled yet (cancelled or failed)."""
        if lane.waiting:
            self.num_waiting_seqs -= len(lane.waiting)
            self.num_waiting_tokens -= lane.waiting_tokens
            lane.waiting.clear()
            lane.waiting_tokens = 0
        try:
            self._lanes.remove(lane)
        except ValueError:
            pass

    def clear(self) -> list[T]:
        """Empty the queue; returns the owners of every lane that still waited."""
        owners = [lane.owner for lane in self._lanes]
        for lane in list(self._lanes):
            self.remove(lane)
        return owners

    def next_batch(self) -> ScheduledBatch[T] | None:
        """The next batch to run, or ``None`` when nothing waits.

        Requests that have not had a batch yet ("fresh") go first and get that
        first batch to themselves: a one-text request then waits for the batch
        already running plus its own short batch, not for a share of someone's
        backlog. So that a stream of new requests cannot starve a big one, a
        batch of backlog follows every fresh batch that made backlog wait.
        Within the chosen group, the first lane picks the pooling task (a batch
        runs one task) and lanes of that task fill the batch round-robin.
        """
        if not self._lanes:
            return None
        fresh = [lane for lane in self._lanes if not lane.started]
        backlog = [lane for lane in self._lanes if lane.started]
        use_fresh = bool(fresh) and not (backlog and self._backlog_skipped)
        group = fresh if use_fresh else backlog
        self._backlog_skipped = use_fresh and bool(backlog)
        task = group[0].pooling_task
        members = self._fill([lane for lane in group if lane.pooling_task == task])
        # Round-robin: the lane that led this batch goes to the back of the line.
        self._lanes.remove(group[0])
        self._lanes.append(group[0])
        self._lanes = deque(lane for lane in self._lanes if lane.waiting)
        return ScheduledBatch(task, members)

    def _fill(self, lanes: list[Lane[T]]) -> list[tuple[Lane[T], int]]:
        """Take one sequence per lane per round while the padded size fits the budget."""
        budget = self.max_num_batched_tokens
        members: list[tuple[Lane[T], int]] = []
        longest = 0
        added = True
        while added:
            added = False
            for lane in lanes:
                if not lane.waiting:
                    continue
                index = lane.waiting[0]
                length = lane.lengths[index]
                # Same rule as schedule_batches: the padded size must fit the budget;
                # a sequence longer than the budget still runs, alone.
                if members and max(longest, length) * (len(members) + 1) > budget:
                    continue
                lane.waiting.popleft()
                lane.waiting_tokens -= length
                lane.started = True
                members.append((lane, index))
                longest = max(longest, length)
                added = True
        self.num_waiting_seqs -= len(members)
        self.num_waiting_tokens -= sum(lane.lengths[i] for lane, i in members)
        return members
