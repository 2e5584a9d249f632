"""The model's input: a batch of sequences packed end to end, with no padding."""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from cenote.inputs.multimodal import MultiModalData


@dataclass
class PackedBatch:
    """A batch of sequences laid end to end: ``[num_tokens]`` tensors, no padding.

    Attention needs sequences apart, so the batch also carries the indices that
    scatter tokens into a right-padded ``[num_seqs, max_len]`` layout and back.
    """

    input_ids: torch.Tensor  # [R] long: the T tokens, then R - T filler rows (id 0)
    positions: torch.Tensor  # [R] long, 0-based within each sequence (0 for filler)
    token_type_ids: torch.Tensor | None  # [R] long
    seq_lens: list[int]
    cu_seqlens: torch.Tensor  # [B + 1] long
    max_len: int
    # [T]: slot of each token in the [B * max_len] padded layout; None when nothing pads.
    padded_index: torch.Tensor | None
    key_padding_mask: torch.Tensor | None  # [B, 1, 1, max_len] bool, True = attend
    num_tokens: int  # T
    num_rows: int  # R >= T: rows the matmuls see (see ``bucket_rows``)
    # [R]: the padded slot each row is read back from (filler rows read slot 0);
    # None when it would be the identity.
    row_index: torch.Tensor | None
    # "first"/"last": the caller pools only each sequence's first/last token, so the
    # last layer computes just those rows (see ``pooled_rows``); "mean": the model
    # returns each sequence's mean row; None: every row.
    pooled: str | None = None
    # [P >= B]: the row of each sequence's pooled token, then filler (row 0).
    pooled_rows: torch.Tensor | None = None
    # Whether some sequence hides its last tokens from attention (ColBERT's query
    # expansion): only ``key_padding_mask`` says which keys are seen, so attention
    # must take the padded path.
    hides_keys: bool = False
    # A vision-language batch: each sequence's images and videos (None: text only), in
    # batch order; None when no sequence has any (see ``inputs/multimodal.py``).
    multimodal: list[MultiModalData | None] | None = None

    @classmethod
    def build(
        cls,
        token_ids: list[list[int]],
        token_type_ids: list[list[int]] | None = None,
        device: torch.device | str = "cpu",
        bucket: bool = False,
        pooled: str | None = None,
        visible_lens: list[int | None] | None = None,
    ) -> PackedBatch:
        """``bucket``: add filler rows up to ``bucket_rows(T)`` (and pooled rows up to
        ``bucket_rows(B)``). ``pooled``: "first" or "last" when only that token of
        each sequence is needed from the last layer, "mean" when only their means."""
        if pooled not in (None, "first", "last", "mean"):
            raise ValueError(f"pooled must be None, 'first', 'last' or 'mean', not {pooled!r}")
        seq_lens = [len(ids) for ids in token_ids]
        if not seq_lens or min(seq_lens) < 1:
            raise ValueError("every sequence of a batch needs at least one token")
        max_len = max(seq_lens)
        # Index arithmetic in numpy: torch.repeat_interleave costs milliseconds per batch.
        lens = np.asarray(seq_lens, dtype=np.int64)
        cu_seqlens = np.zeros(len(seq_lens) + 1, dtype=np.int64)
        np.cumsum(lens, out=cu_seqlens[1:])
        num_tokens = int(cu_seqlens[-1])
        num_rows = bucket_rows(num_tokens) if bucket else num_tokens
        filler = num_rows - num_tokens
        positions = np.zeros(num_rows, dtype=np.int64)
        positions[:num_tokens] = (np.arange(num_tokens, dtype=np.int64)
                                  - np.repeat(cu_seqlens[:-1], lens))
        input_ids = _flat(token_ids, num_tokens, num_rows)
        types = None if token_type_ids is None else _flat(token_type_ids, num_tokens, num_rows)
        slots = padded_index = mask = row_index = None
        hides_keys = visible_lens is not None and any(
            v is not None and v < n for v, n in zip(visible_lens, seq_lens, strict=True))
        if min(seq_lens) != max_len or hides_keys:
            valid = np.arange(max_len)[None, :] < lens[:, None]  # [B, max_len]
            # Tokens are laid out sequence by sequence, so their padded slots are
            # exactly the valid cells of the mask in row-major order.
            slots = np.flatnonzero(valid)
            padded_index = upload(slots, device)
            seen = valid
            if hides_keys:  # every token attends to the first visible_lens keys only
                limits = np.asarray([n if v is None else v
                                     for v, n in zip(visible_lens, seq_lens, strict=True)])
                seen = np.arange(max_len)[None, :] < limits[:, None]
            mask = upload(seen, device)[:, None, None, :]
        if filler:
            if slots is None:
                slots = np.arange(num_tokens, dtype=np.int64)
            row_index = upload(np.concatenate([slots, np.zeros(filler, dtype=np.int64)]),
                               device)
        else:
            row_index = padded_index
        pooled_rows = None
        if pooled in ("first", "last"):
            picked = cu_seqlens[:-1] if pooled == "first" else cu_seqlens[1:] - 1
            count = bucket_rows(len(seq_lens)) if bucket else len(seq_lens)
            pooled_rows = upload(
                np.concatenate([picked, np.zeros(count - len(seq_lens), dtype=np.int64)]),
                device)
        return cls(
            input_ids=upload(input_ids, device),
            positions=upload(positions, device),
            token_type_ids=upload(types, device) if types is not None else None,
            seq_lens=seq_lens,
            cu_seqlens=upload(cu_seqlens, device),
            max_len=max_len,
            padded_index=padded_index,
            key_padding_mask=mask,
            num_tokens=num_tokens,
            num_rows=num_rows,
            row_index=row_index,
            pooled=pooled,
            pooled_rows=pooled_rows,
            hides_keys=hides_keys,
        )

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens)

    @functools.cached_property
    def cu_seqlens_i32(self) -> torch.Tensor:
        """``cu_seqlens`` as int32, the type flash attention takes (made once per batch)."""
        return self.cu_seqlens.to(torch.int32)

    def to_padded(self, x: torch.Tensor) -> torch.Tensor:
        """``[R or T, ...]`` -> ``[B, max_len, ...]`` (zeros in the padding; filler rows
        are left out)."""
        x = x[:self.num_tokens]
        if self.padded_index is None:
            return x.view(self.num_seqs, self.max_len, *x.shape[1:])
        out = x.new_zeros(self.num_seqs * self.max_len, *x.shape[1:])
        out.index_copy_(0, self.padded_index, x)
        return out.view(self.num_seqs, self.max_len, *x.shape[1:])

    def from_padded(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, max_len, ...]`` -> ``[R, ...]`` (filler rows: a copy of some token)."""
        flat = x.reshape(self.num_seqs * self.max_len, *x.shape[2:])
        if self.row_index is None:
            return flat
        return flat.index_select(0, self.row_index)


def _flat(lists: list[list[int]], count: int, rows: int) -> torch.Tensor:
    """``lists`` end to end as ``[rows]`` longs, zeros after the first ``count``
    (``np.fromiter`` over the chain: 2.5-4x ``torch.tensor`` of a joined list)."""
    out = np.zeros(rows, dtype=np.int64)
    out[:count] = np.fromiter(itertools.chain.from_iterable(lists), dtype=np.int64, count=count)
    return torch.from_numpy(out)


def upload(data: np.ndarray | torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``data`` on ``device``. To a GPU it goes through pinned memory without waiting:
    a copy from pageable memory waits for every kernel queued before it, so the next
    batch could not be prepared while one runs (:mod:`cenote.engine.pipeline`)."""
    tensor = torch.from_numpy(data) if isinstance(data, np.ndarray) else data
    device = torch.device(device)
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def bucket_rows(num_tokens: int) -> int:
    """``num_tokens`` rounded up to a bucket: a multiple of 16, or of 1/32 of the next
    power of two for big batches (at most ~6 % filler past 512 tokens).

    Why: oneDNN compiles and caches a kernel per matmul shape (up to 1024). With
    one shape per token count, a server's varied batches fill that cache with
    hundreds of kernels (RSS still growing after thousands of requests, and a
    compile on each new shape); buckets keep the shapes few.
    """
    step = max(16, (1 << max(num_tokens - 1, 0).bit_length()) // 32)
    return -(-num_tokens // step) * step
