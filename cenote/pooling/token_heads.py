"""Heads of the token-level and sparse tasks: per-token vectors (token_embed), per-token
head outputs (token_classify) and sparse vocabulary vectors (embed_sparse).

Each takes the blocks of rows ALL pooling picked (one block per sequence).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cenote.config.retrieval import SparseConfig
from cenote.params import PoolingParams
from cenote.pooling.heads import apply_to_rows, as_float_rows
from cenote.pooling.late_chunking import mean_pool_chunks
from cenote.pooling.methods import PoolingMetadata

# Rows of masked-LM logits made at once: [rows, vocab] floats (32 MB for BERT's vocab).
_VOCAB_ROWS_PER_STEP = 256


class TokenEmbedHead(nn.Module):
    """token_embed: each token's vector after the model's per-token projection (ColBERT's
    Dense, BGE-M3's colbert_linear; none for a plain encoder), normalised as asked.
    ``drop_first_token``: BGE-M3 leaves [CLS] out. With late chunking, one vector per
    chunk of the projected rows (all of them: [CLS] too), each normalised as asked: the
    projection is linear, so this is vLLM's projection of the chunk's mean."""

    def __init__(self, projection: nn.Module | None, drop_first_token: bool = False) -> None:
        super().__init__()
        self.projection = projection
        self.drop_first_token = drop_first_token

    def forward(self, pooled: list[torch.Tensor], meta: PoolingMetadata,
                params: Sequence[PoolingParams]) -> list[torch.Tensor]:
        if self.drop_first_token:
            pooled = [rows if p.late_chunking_params else rows[1:]
                      for rows, p in zip(pooled, params, strict=True)]
        rows = as_float_rows(apply_to_rows(self.projection, pooled))
        rows = [mean_pool_chunks(r, p.late_chunking_params.chunk_size)
                if p.late_chunking_params else r for r, p in zip(rows, params, strict=True)]
        return [F.normalize(r, p=2, dim=-1) if p.normalize else r
                for r, p in zip(rows, params, strict=True)]


class TokenClassifyHead(nn.Module):
    """token_classify: the per-token head's outputs (a reward head, BGE-M3's relu'd
    sparse_linear weights), softmax over the labels where asked.

    ``bounds`` (BGE-M3's lexical weights, as vLLM's ``BOSEOSFilter``): the (BOS, EOS) ids
    whose rows are left out when a sequence starts (BOS) or ends (EOS) with them, and the
    one weight per token answered as a flat vector ``[num_tokens]``."""

    def __init__(self, token_head: nn.Module | None,
                 bounds: tuple[int | None, int | None] | None = None) -> None:
        super().__init__()
        self.token_head = token_head
        self.bounds = bounds

    def forward(self, pooled: list[torch.Tensor], meta: PoolingMetadata,
                params: Sequence[PoolingParams]) -> list[torch.Tensor]:
        rows = as_float_rows(apply_to_rows(self.token_head, pooled))
        if self.bounds is None:
            return [torch.softmax(r, dim=-1) if p.activation else r
                    for r, p in zip(rows, params, strict=True)]
        bos, eos = self.bounds  # BGE-M3's head ends in its own activation (relu)
        out = []
        for r, ids in zip(rows, meta.input_ids.split(meta.seq_lens), strict=True):
            start = 1 if len(ids) and int(ids[0]) == bos else 0
            end = len(r) - 1 if len(ids) > start and int(ids[-1]) == eos else len(r)
            out.append(r[start:end].squeeze(-1))
        return out


class SparseHead(nn.Module):
    """embed_sparse: one sparse vector over the vocabulary per sequence, as a coalesced
    1-D sparse tensor (indices ascending).

    SPLADE (``vocab_head`` is the masked-LM head): max (or sum) over tokens of
    log(1 + relu(logits)), then the ``max_active_dims`` largest kept. Lexical
    (``vocab_head`` gives one weight per token, BGE-M3's relu(sparse_linear)): each
    token id's largest weight, special tokens and weights <= 0 left out.
    """

    def __init__(self, config: SparseConfig, vocab_head: nn.Module, vocab_size: int,
                 special_ids: frozenset[int] = frozenset()) -> None:
        super().__init__()
        self.config = config
        self.vocab_head = vocab_head
        self.vocab_size = vocab_size
        self.register_buffer("special_ids", torch.tensor(sorted(special_ids), dtype=torch.long),
                             persistent=False)

    def forward(self, pooled: list[torch.Tensor], meta: PoolingMetadata,
                params: Sequence[PoolingParams]) -> list[torch.Tensor]:
        if self.config.kind == "lexical":
            ids = meta.input_ids.split(meta.seq_lens)
            return [self._lexical(rows, seq_ids) for rows, seq_ids in zip(pooled, ids,
                                                                        strict=True)]
        return [self._splade(rows) for rows in pooled]

    def _splade(self, rows: torch.Tensor) -> torch.Tensor:
        weight = next(self.vocab_head.parameters())
        total = None
        for start in range(0, rows.shape[0], _VOCAB_ROWS_PER_STEP):
            logits = self.vocab_head(rows[start:start + _VOCAB_ROWS_PER_STEP].to(weight.dtype))
            values = torch.log1p(torch.relu(logits.float()))
            if self.config.activation == "log1p_relu":
                values = torch.log1p(values)
            step = values.amax(0) if self.config.pooling == "max" else values.sum(0)
            total = step if total is None else (torch.maximum(total, step)
                                                if self.config.pooling == "max" else total + step)
        k = self.config.max_active_dims
        if k is not None and k < total.numel():
            keep = torch.topk(total.abs(), k).indices
            total = torch.zeros_like(total).index_copy_(0, keep, total[keep])
        return _sparse(total)

    def _lexical(self, rows: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        weight = next(self.vocab_head.parameters())
        weights = torch.relu(self.vocab_head(rows.to(weight.dtype)).float()).reshape(-1)
        keep = (weights > 0) & ~torch.isin(ids, self.special_ids)
        ids, weights = ids[keep], weights[keep]
        vector = torch.zeros(self.vocab_size, dtype=torch.float32, device=rows.device)
        vector.scatter_reduce_(0, ids, weights, reduce="amax")
        return _sparse(vector)


def _sparse(vector: torch.Tensor) -> torch.Tensor:
    """The non-zero entries of a dense 1-D vector as a coalesced sparse tensor (the
    indices come out sorted and distinct, so no invariant check is needed)."""
    ids = torch.nonzero(vector, as_tuple=True)[0]
    return torch.sparse_coo_tensor(ids[None], vector[ids], vector.shape, is_coalesced=True,
                                   check_invariants=False)
