"""Scoring text pairs: a cross-encoder runs each pair as one sequence; an embedding
model embeds every distinct text once and scores pairs by cosine similarity."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cenote.inputs.prompts import SequenceInput
from cenote.outputs import PoolingOutput, PoolingRequestOutput, ScoringRequestOutput


@dataclass
class ScoreJob:
    """The sequences a score request runs (for ``pooling_task``) and how their outputs
    become one score per pair."""

    pairs: Sequence[tuple[str, str]]
    seqs: list[SequenceInput]
    pooling_task: str  # "score" (cross-encoder) or "embed" (cosine)
    texts: list[str] | None = None  # the embedded texts, for cosine

    def finish(self, data: Sequence[torch.Tensor],
               request_id: Callable[[int], str]) -> list[ScoringRequestOutput]:
        """One output per pair, in pair order; ``request_id(k)`` names the k-th."""
        if self.texts is None:
            return [ScoringRequestOutput.from_base(
                        PoolingRequestOutput(request_id(k), PoolingOutput(d), s.token_ids))
                    for k, (s, d) in enumerate(zip(self.seqs, data, strict=True))]
        return cosine_scores(self.pairs, self.texts, self.seqs, data, request_id)


def score_texts(pairs: Sequence[tuple[str, str]]) -> list[str]:
    """The distinct texts of ``pairs``, each embedded once for cosine scoring."""
    return list(dict.fromkeys(t for pair in pairs for t in pair))


def cosine_scores(
    pairs: Sequence[tuple[str, str]],
    texts: list[str],
    seqs: Sequence[SequenceInput],
    vectors: Sequence[torch.Tensor],
    request_ids: Callable[[int], str],
) -> list[ScoringRequestOutput]:
    """Score each pair by the cosine similarity of its two embeddings."""
    index = {t: i for i, t in enumerate(texts)}
    outputs = []
    for k, (a, b) in enumerate(pairs):
        ia, ib = index[a], index[b]
        # Clamped: rounding can put parallel vectors at 1.0000002.
        score = F.cosine_similarity(vectors[ia], vectors[ib], dim=0).clamp(-1.0, 1.0)
        base = PoolingRequestOutput(request_ids(k), PoolingOutput(score),
                                    seqs[ia].token_ids + seqs[ib].token_ids)
        outputs.append(ScoringRequestOutput.from_base(base))
    return outputs
