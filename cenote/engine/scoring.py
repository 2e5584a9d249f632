"""Scoring text pairs, by what the model has: a cross-encoder runs each pair as one
sequence; otherwise each distinct text runs once and pairs are scored by their
outputs: MaxSim over late-interaction vectors, the dot product of sparse vectors,
or the cosine similarity of embeddings."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from cenote.inputs.prompts import SequenceInput
from cenote.outputs import PoolingOutput, PoolingRequestOutput, ScoringRequestOutput

# A document with no vector to match (all its tokens left out) ranks below any other,
# as Sentence-Transformers scores it.
NO_MATCH_SCORE = -1e9


@dataclass
class ScoreJob:
    """The records a score request runs (for ``pooling_task``) and how their outputs
    become one score per pair.

    ``pooling_task`` "score": one record per pair (a cross-encoder). Otherwise the
    records are the distinct ``left`` texts, then the distinct ``right`` texts (one
    list, ``left``, when both sides are scored alike), scored by MaxSim
    ("token_embed"), dot product ("embed_sparse") or cosine ("embed").
    """

    pairs: Sequence[tuple[str, str]]
    seqs: list[SequenceInput]
    pooling_task: str
    left: list[str] | None = None
    right: list[str] | None = None
    # Late interaction: MaxSim divided by the query's vectors (BGE-M3's colbert_score).
    mean_over_query: bool = False

    def finish(self, data: Sequence[torch.Tensor],
               request_id: Callable[[int], str]) -> list[ScoringRequestOutput]:
        """One output per pair, in pair order; ``request_id(k)`` names the k-th."""
        if self.left is None:
            return [ScoringRequestOutput.from_base(
                        PoolingRequestOutput(request_id(k), PoolingOutput(d), s.token_ids,
                                             num_input_tokens=s.cost))
                    for k, (s, d) in enumerate(zip(self.seqs, data, strict=True))]
        left = {item_key(t): i for i, t in enumerate(self.left)}
        offset = len(self.left) if self.right is not None else 0
        right = {item_key(t): offset + i for i, t in enumerate(self.right or self.left)}
        outputs = []
        for k, (a, b) in enumerate(self.pairs):
            ia, ib = left[item_key(a)], right[item_key(b)]
            score = self._score(data[ia], data[ib])
            base = PoolingRequestOutput(request_id(k), PoolingOutput(score),
                                        self.seqs[ia].token_ids + self.seqs[ib].token_ids,
                                        num_input_tokens=self.seqs[ia].cost + self.seqs[ib].cost)
            outputs.append(ScoringRequestOutput.from_base(base))
        return outputs

    def _score(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.pooling_task == "token_embed":
            return maxsim(a, b, self.mean_over_query)
        if self.pooling_task == "embed_sparse":
            return torch.sparse.sum(a * b) if a._nnz() and b._nnz() else torch.tensor(0.0)
        # Clamped: rounding can put parallel vectors at 1.0000002.
        return F.cosine_similarity(a, b, dim=0).clamp(-1.0, 1.0)


def maxsim(query: torch.Tensor, document: torch.Tensor, mean: bool = False) -> torch.Tensor:
    """For each query vector its best dot product with any document vector, summed
    (or averaged over the query's vectors)."""
    if len(document) == 0 or len(query) == 0:
        return torch.tensor(NO_MATCH_SCORE)
    best = (query.float() @ document.float().T).amax(dim=1)
    return best.mean() if mean else best.sum()


def item_key(item: Any) -> Any:
    """What makes two score inputs the same: a text's characters, an image prompt's
    identity (the same object)."""
    return item if isinstance(item, str) else id(item)


def distinct(items: Iterable[Any]) -> list[Any]:
    """``items`` once each (by :func:`item_key`), in first-seen order."""
    seen: dict[Any, Any] = {}
    for item in items:
        seen.setdefault(item_key(item), item)
    return list(seen.values())
