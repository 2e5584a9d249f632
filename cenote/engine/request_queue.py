"""The server's waiting room: sequences from many requests, picked into shared batches.

Each request's sequences wait in their own lane, longest first (as the offline
scheduler orders them, so attention pads little). A batch is filled round-robin
across the lanes of one pooling task, one sequence per lane per round, under
the same padded-token budget as :func:`cenote.engine.scheduler.schedule_batches`.
After every batch the lane that started it moves to the back of the line. So a
request with thousands of inputs is cut into batches that interleave with
everybody else's, and a one-text request that arrives behind it rides in the
very next batch instead of waiting for the whole big request.
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

        The lane at the head of the line picks the pooling task (a batch runs
        one task); only lanes of that task join.
        """
        if not self._lanes:
            return None
        task = self._lanes[0].pooling_task
        lanes = [lane for lane in self._lanes if lane.pooling_task == task]
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
                members.append((lane, index))
                longest = max(longest, length)
                added = True
        self.num_waiting_seqs -= len(members)
        self.num_waiting_tokens -= sum(lane.lengths[i] for lane, i in members)
        # Round-robin: the head goes to the back; lanes with nothing left leave.
        self._lanes.rotate(-1)
        self._lanes = deque(lane for lane in self._lanes if lane.waiting)
        return ScheduledBatch(task, members)
