"""Static embeddings (model2vec, Sentence-Transformers ``StaticEmbedding``): a table of
token vectors and no layers. A text's embedding is the mean of its tokens' rows, one
``embedding_bag`` over the packed batch's ids: no attention, no padding."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

from cenote.config.static import StaticEmbeddingConfig
from cenote.models.batch import PackedBatch
from cenote.models.interface import PoolingModel


class StaticEmbeddingModel(PoolingModel):
    """Rows of the token-vector table: per token, or each sequence's mean
    (``batch.pooled == "mean"``, as :attr:`computes_mean_rows` declares)."""

    computes_mean_rows = True
    single_threaded = True

    def __init__(self, config: StaticEmbeddingConfig, task: str = "embed") -> None:
        super().__init__()
        self.table = torch.nn.Parameter(torch.zeros(config.vocab_size, config.hidden_size),
                                        requires_grad=False)
        # model2vec leaves the unknown token out of the mean: its row is zero (set at
        # load) and the mean divides by the other tokens only.
        self.ignored_token_id = config.ignored_token_id

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        ids = batch.input_ids[:batch.num_tokens]
        if batch.pooled != "mean":
            return F.embedding(ids, self.table)
        starts = batch.cu_seqlens[:-1]
        if self.ignored_token_id is None:
            return F.embedding_bag(ids, self.table, starts, mode="mean")
        ignored = ids == self.ignored_token_id
        if not bool(ignored.any()):
            return F.embedding_bag(ids, self.table, starts, mode="mean")
        sums = F.embedding_bag(ids, self.table, starts, mode="sum")
        owner = torch.repeat_interleave(torch.arange(len(starts), device=ids.device),
                                        batch.cu_seqlens.diff())
        counts = torch.zeros(len(starts), device=ids.device).index_add_(
            0, owner, (~ignored).float())
        # A text of only ignored tokens: a zero vector, as model2vec gives.
        return sums / counts.clamp(min=1).to(sums.dtype)[:, None]

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """The table as the library reads it: Sentence-Transformers' ``embedding.weight``,
        or model2vec's ``embeddings`` with its vocabulary quantization folded in (row
        ``i`` is ``embeddings[mapping[i]] * weights[i]``)."""
        tensors = dict(weights)
        table = tensors.get("embedding.weight")
        if table is None:
            if "embeddings" not in tensors:
                raise ValueError("Expected a tensor 'embeddings' (model2vec) or "
                                 "'embedding.weight' (Sentence-Transformers).")
            table = tensors["embeddings"].float()
            if "mapping" in tensors:
                table = table[tensors["mapping"].long()]
            if "weights" in tensors:
                table = table * tensors["weights"].float()[:, None]
        if table.shape != self.table.shape:
            raise ValueError(f"The token vectors have shape {tuple(table.shape)}, expected "
                             f"{tuple(self.table.shape)}.")
        self.table.data.copy_(table)
        if self.ignored_token_id is not None:
            self.table.data[self.ignored_token_id] = 0
