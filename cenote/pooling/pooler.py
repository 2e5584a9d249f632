"""The pooler: for each pooling task one method (which rows) and one head (what is
made of them), applied to a whole batch's hidden states at once."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cenote.config import PoolingType
from cenote.params import PoolingParams
from cenote.pooling.heads import ClassifierHead, EmbeddingHead, TokenHead
from cenote.pooling.methods import PoolingMetadata, select_tokens
from cenote.pooling.policy import PoolingPolicy


class Pooler(nn.Module):
    """Turns a batch's hidden states into one output tensor per sequence.

    Heads (all optional): ``dense`` (Sentence-Transformers Dense layers, embed),
    ``classifier`` (classify/score, sequence-level), ``token_head`` (reward models,
    applied to each token for encode); ``score_activation``: a cross-encoder's own
    activation for the Score API.
    """

    def __init__(
        self,
        policy: PoolingPolicy,
        dense: nn.Module | None = None,
        classifier: nn.Module | None = None,
        token_head: nn.Module | None = None,
        score_activation: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.dense = dense
        self.classifier = classifier
        self.token_head = token_head
        self.methods: dict[str, PoolingType] = {
            task: pooler.pooling_type for task, pooler in policy.task_poolers.items()}
        heads = {
            "encode": lambda: TokenHead(token_head, self.methods["encode"]),
            "embed": lambda: EmbeddingHead(dense),
            "classify": lambda: ClassifierHead(classifier, score=False),
            "score": lambda: ClassifierHead(classifier, score=True,
                                            score_activation=score_activation),
        }
        self.heads = nn.ModuleDict({task: heads[task]() for task in self.methods})

    def forward(
        self,
        hidden: torch.Tensor,
        meta: PoolingMetadata,
        pooling_task: str,
        params: Sequence[PoolingParams],
    ) -> list[torch.Tensor]:
        """Pool every sequence of the batch; ``params`` are already resolved."""
        pooled = select_tokens(hidden, meta, self.methods[pooling_task])
        return self.heads[pooling_task](pooled, meta, params)
