"""Pooling methods: which rows of a packed batch's hidden states make each output.

The model hands over ``hidden`` as ``[num_tokens, hidden_size]`` for a whole
batch; ``cu_seqlens`` marks where each sequence starts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cenote.config import PoolingType


@dataclass
class PoolingMetadata:
    """Where each sequence of a packed batch lives."""

    seq_lens: list[int]
    cu_seqlens: torch.Tensor  # [num_seqs + 1], long, on the model's device
    input_ids: torch.Tensor  # [num_tokens]
    # Leading tokens of each sequence MEAN pooling leaves out (an instruction's); None: none.
    pool_skip: list[int] | None = None


# Poolers that give one row per sequence: what embed and classify need.
ONE_ROW_POOLING = (PoolingType.CLS, PoolingType.MEAN, PoolingType.LAST)


def select_tokens(
    hidden: torch.Tensor, meta: PoolingMetadata, pooling_type: PoolingType
) -> torch.Tensor | list[torch.Tensor]:
    """One row per sequence (CLS, LAST, MEAN) or all rows of each sequence (ALL, STEP)."""
    starts = meta.cu_seqlens[:-1]
    if pooling_type is PoolingType.CLS:
        return hidden[starts]
    if pooling_type is PoolingType.LAST:
        return hidden[meta.cu_seqlens[1:] - 1]
    if pooling_type is PoolingType.MEAN:
        if len(hidden) == len(meta.seq_lens):  # one row each (a model's own means)
            return hidden.float()
        # fp32 sums of each sequence's rows in one scatter (per-sequence means cost a
        # few operations per sequence: 2.5x slower on a CPU, a kernel launch each on a GPU).
        lens = np.asarray(meta.seq_lens)
        owners = np.repeat(np.arange(len(lens)), lens)
        rows = hidden[:len(owners)]
        if meta.pool_skip is not None:
            # A sequence that is all instruction keeps its tokens (nothing else to pool).
            skip = np.where(np.asarray(meta.pool_skip) < lens, meta.pool_skip, 0)
            position = np.arange(len(owners)) - np.repeat(np.cumsum(lens) - lens, lens)
            kept = position >= np.repeat(skip, lens)
            owners, lens = owners[kept], lens - skip
            rows = rows[torch.from_numpy(np.flatnonzero(kept)).to(hidden.device)]
        owner = torch.from_numpy(owners).to(hidden.device)
        sums = hidden.new_zeros(len(lens), hidden.shape[-1], dtype=torch.float32)
        sums.index_add_(0, owner, rows.float())
        return sums / torch.from_numpy(lens).to(hidden.device, torch.float32)[:, None]
    return list(hidden.split(meta.seq_lens))
