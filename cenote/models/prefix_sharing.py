"""Shared prefixes on causal decoders: rows that several sequences of a batch share are
computed once (vLLM's prefix caching, within a batch).

In a causal model a token's state at every layer depends only on the tokens up to it
and their positions, so sequences that start with the same k tokens (an instruction:
``"Instruct: Given a web search query, ...\\nQuery: "``) have the same first k rows at
every layer. :func:`share_prefixes` finds them: sorted by their token ids, each sequence
shares with the one before it their common prefix, when it is at least
``MIN_SHARED_TOKENS`` long (a sequence that is all prefix, or a duplicate, shares all of
its rows). The batch the model then runs, :class:`DistinctRows`, holds each distinct
row once: the projections, MLPs and norms of every layer see only those rows.
Attention still runs over every sequence whole, its queries, keys and values gathered
from the distinct rows (:func:`attention`): each sequence's tokens attend to the
shared prefix's keys and values, computed once, then to their own, at the positions
they have in the whole sequence. It costs as without sharing, little beside the
matmuls for short inputs.

The results are those of running each sequence whole, to the rounding of matmuls
over a different number of rows. Not for bidirectional models: there a prefix's
states depend on what follows it. Every token's row comes back (:func:`token_rows`),
so mean and per-token poolers read the shared prefix's rows too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from cenote.models.batch import PackedBatch, bucket_rows, upload
from cenote.models.layers import packed_attention

# The shortest common prefix shared (vLLM caches whole blocks of 16 tokens; cenote
# shares any length from here).
MIN_SHARED_TOKENS = 8
# Sharing gathers every layer's queries, keys and values into the whole sequences
# (and the attention's output back): worth it when it saves at least this share of rows.
MIN_SAVED_SHARE = 1 / 16


@dataclass
class DistinctRows(PackedBatch):
    """The distinct rows of ``whole``, a causal batch whose sequences share prefixes.

    ``input_ids`` and ``positions`` are the distinct rows' (each its position in its
    sequence), ``num_tokens`` their count, then filler up to ``num_rows``;
    ``pooled_rows`` the distinct row of each sequence's pooled token. ``seq_lens``,
    ``cu_seqlens`` and ``max_len`` are ``whole``'s: they describe the sequences, not
    these rows.
    """

    whole: PackedBatch | None = None
    # [whole.num_rows]: the distinct row each row of ``whole`` is (its filler: 0).
    expand: torch.Tensor | None = None
    # [num_rows]: a row of ``whole`` that each distinct row is (filler: 0).
    sources: torch.Tensor | None = None


def share_prefixes(batch: PackedBatch, token_ids: Sequence[Sequence[int]],
                   bucket: bool = False) -> PackedBatch:
    """``batch`` (packed from ``token_ids``) as its :class:`DistinctRows`, or ``batch``
    itself when too few rows are shared to be worth it. ``bucket``: filler rows up to
    ``bucket_rows`` (as ``PackedBatch.build``'s)."""
    if batch.token_type_ids is not None or batch.hides_keys or batch.pooled == "mean":
        return batch
    lens = np.asarray(batch.seq_lens, dtype=np.int64)
    cu = np.zeros(len(lens) + 1, dtype=np.int64)
    np.cumsum(lens, out=cu[1:])
    plan = _distinct_rows(token_ids, lens, cu)
    if plan is None:
        return batch
    expand, sources, positions = plan
    count, total = len(sources), int(cu[-1])
    if total - count < max(1, MIN_SAVED_SHARE * total):
        return batch
    rows = bucket_rows(count) if bucket else count
    flat = np.fromiter((t for ids in token_ids for t in ids), dtype=np.int64, count=total)
    pooled_rows = None
    if batch.pooled_rows is not None:
        picked = cu[:-1] if batch.pooled == "first" else cu[1:] - 1
        pooled_rows = _filled(expand[picked], len(batch.pooled_rows))
    device = batch.input_ids.device
    return DistinctRows(
        input_ids=upload(_filled(flat[sources], rows), device),
        positions=upload(_filled(positions, rows), device),
        token_type_ids=None,
        seq_lens=batch.seq_lens,
        cu_seqlens=batch.cu_seqlens,
        max_len=batch.max_len,
        padded_index=None,
        key_padding_mask=None,
        num_tokens=count,
        num_rows=rows,
        row_index=None,
        pooled=batch.pooled,
        pooled_rows=None if pooled_rows is None else upload(pooled_rows, device),
        whole=batch,
        expand=upload(_filled(expand, batch.num_rows), device),
        sources=upload(_filled(sources, rows), device),
    )


def _distinct_rows(token_ids: Sequence[Sequence[int]], lens: np.ndarray, cu: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(expand, sources, positions)``: the distinct row of each token (``[T]``), and
    of each distinct row a token that is it and its position; None when no sequence
    shares ``MIN_SHARED_TOKENS`` tokens with another."""
    # Lists compare with lists only (a prompt's ids may come as a tuple).
    token_ids = [ids if isinstance(ids, list) else list(ids) for ids in token_ids]
    # In lexicographic order the longest prefix a sequence shares with any before it is
    # the one it shares with the sequence just before it.
    order = sorted(range(len(token_ids)), key=token_ids.__getitem__)
    shared = np.zeros(len(order), dtype=np.int64)
    for s in range(1, len(order)):
        common = _common_prefix(token_ids[order[s - 1]], token_ids[order[s]])
        shared[s] = common if common >= MIN_SHARED_TOKENS else 0
    if not shared.any():
        return None
    total = int(cu[-1])
    expand = np.empty(total, dtype=np.int64)
    sources = np.empty(total - int(shared.sum()), dtype=np.int64)
    positions = np.empty_like(sources)
    count = 0
    for s, i in enumerate(order):
        start, end, k = int(cu[i]), int(cu[i + 1]), int(shared[s])
        if k:  # the rows of the prefix: those of the sequence before, already placed
            before = int(cu[order[s - 1]])
            expand[start:start + k] = expand[before:before + k]
        new = end - start - k
        expand[start + k:end] = np.arange(count, count + new)
        sources[count:count + new] = np.arange(start + k, end)
        positions[count:count + new] = np.arange(k, lens[i])
        count += new
    return expand, sources, positions


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo] and a[:hi] != b[:hi]: halve with C-speed compares
    while hi - lo > 16:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    while a[lo] == b[lo]:
        lo += 1
    return lo


def _filled(values: np.ndarray, rows: int) -> np.ndarray:
    """``values`` then zeros, ``rows`` long."""
    out = np.zeros(rows, dtype=np.int64)
    out[:len(values)] = values
    return out


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: PackedBatch,
              causal: bool, sliding_window: int | None = None,
              pooled_only: bool = False) -> torch.Tensor:
    """``packed_attention``; on :class:`DistinctRows`, over its whole sequences, with
    the queries, keys and values of each sequence's tokens gathered from the distinct
    rows. Returns the distinct rows' output (``[batch.num_rows, heads * head_dim]``),
    or with ``pooled_only`` the pooled rows', as ``packed_attention`` does."""
    if not isinstance(batch, DistinctRows):
        return packed_attention(q, k, v, batch, causal, sliding_window, pooled_only)
    if not causal:  # a caller's bug: the runner shares prefixes for causal models only
        raise RuntimeError("shared prefixes need causal attention")
    whole = batch.whole
    tokens = batch.expand[:whole.num_tokens]
    out = packed_attention(q.index_select(0, tokens), k.index_select(0, tokens),
                           v.index_select(0, tokens), whole, causal, sliding_window,
                           pooled_only)
    return out if pooled_only else out.index_select(0, batch.sources)


def token_rows(hidden: torch.Tensor, batch: PackedBatch
               ) -> tuple[torch.Tensor, PackedBatch]:
    """The model's output for every row of the batch's sequences, and that batch:
    ``(hidden, batch)`` itself, or for :class:`DistinctRows` each token's distinct row
    and the whole batch."""
    if not isinstance(batch, DistinctRows):
        return hidden, batch
    return hidden.index_select(0, batch.expand), batch.whole
