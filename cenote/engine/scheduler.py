"""Packing sequences into batches under a token budget."""

from __future__ import annotations

from collections.abc import Sequence


def schedule_batches(lengths: Sequence[int], max_num_batched_tokens: int) -> list[list[int]]:
    """Group sequence indices into batches of similar length.

    Sequences are sorted by length (longest first) so each batch pads little in
    attention, then packed greedily while the batch's padded size
    (``num_seqs * longest``) stays within ``max_num_batched_tokens``. A sequence
    longer than the budget gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        length = lengths[i]
        if current and max(longest, length) * (len(current) + 1) > max_num_batched_tokens:
            batches.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, length)
    if current:
        batches.append(current)
    return batches
