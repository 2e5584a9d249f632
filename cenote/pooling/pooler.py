"""The pooler: for each pooling task one method (which rows) and one head (what is
made of them), applied to a whole batch's hidden states at once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from cenote.config import PoolingType
from cenote.params import PoolingParams
from cenote.pooling.heads import ClassifierHead, EmbeddingHead, LogitCalibration, TokenHead
from cenote.pooling.methods import PoolingMetadata, select_tokens
from cenote.pooling.policy import PoolingPolicy
from cenote.pooling.token_heads import SparseHead, TokenClassifyHead, TokenEmbedHead


@dataclass
class HeadWeights:
    """The weights a model's poolers apply after its body (all optional, loaded by the
    registry): ``dense`` (Sentence-Transformers Dense layers, embed), ``classifier``
    (classify/score), ``token_head`` (per token: reward heads, BGE-M3's lexical
    weights), ``score_activation`` (a cross-encoder's own activation for the Score
    API), ``token_projection`` (late interaction's per-token projection; with
    ``drop_first_token``, BGE-M3 leaves [CLS] out), ``sparse`` (the embed_sparse head),
    ``token_bounds`` (BGE-M3's token_classify: the BOS and EOS ids whose rows it drops,
    one weight per token), ``token_classifier`` (token_classify's head where it is not
    ``token_head``: a masked-LM head, whose vocabulary logits encode does not give)."""

    dense: nn.Module | None = None
    classifier: nn.Module | None = None
    token_head: nn.Module | None = None
    score_activation: nn.Module | None = None
    token_projection: nn.Module | None = None
    drop_first_token: bool = False
    sparse: SparseHead | None = None
    token_bounds: tuple[int | None, int | None] | None = None
    token_classifier: nn.Module | None = None

    def modules(self) -> list[nn.Module]:
        return [m for m in (self.dense, self.classifier, self.token_head,
                            self.token_projection, self.sparse, self.token_classifier)
                if m is not None]


class Pooler(nn.Module):
    """Turns a batch's hidden states into one output tensor per sequence."""

    def __init__(self, policy: PoolingPolicy, weights: HeadWeights) -> None:
        super().__init__()
        self.weights = weights
        self.methods: dict[str, PoolingType] = {
            task: pooler.pooling_type for task, pooler in policy.task_poolers.items()}
        config = policy.config
        pooler_config = config.pooler_config
        calibration = LogitCalibration(pooler_config.logit_mean, pooler_config.logit_sigma)
        problem_type = getattr(config.hf_config, "problem_type", None)
        heads = {
            "encode": lambda: TokenHead(weights.token_head, self.methods["encode"]),
            "embed": lambda: EmbeddingHead(weights.dense),
            "classify": lambda: ClassifierHead(weights.classifier, score=False,
                                               score_activation=weights.score_activation,
                                               calibration=calibration,
                                               problem_type=problem_type),
            "score": lambda: ClassifierHead(weights.classifier, score=True,
                                            score_activation=weights.score_activation,
                                            calibration=calibration,
                                            problem_type=problem_type),
            "token_embed": lambda: TokenEmbedHead(weights.token_projection,
                                                  weights.drop_first_token),
            # A sequence classifier's token_classify: its classifier on every token (vLLM).
            "token_classify": lambda: TokenClassifyHead(weights.token_classifier
                                                        or weights.token_head
                                                        or weights.classifier,
                                                        weights.token_bounds),
            "embed_sparse": lambda: weights.sparse,
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
