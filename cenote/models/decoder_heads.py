"""Per-token heads of the decoder families, named ``score`` as in their checkpoints:
a reward model's (Linear -> ReLU -> Linear) and a ``*ForTokenClassification``'s (one
Linear). The pooler applies them to every token (encode, token_classify)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cenote.config.token_classification import REWARD_SUFFIXES, is_token_classifier


class RewardHead(nn.Module):
    """Qwen2ForRewardModel's per-token head: Linear -> ReLU -> Linear."""

    def __init__(self, hidden_size: int, num_labels: int) -> None:
        super().__init__()
        self.out_features = num_labels
        self.score = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.ReLU(),
                                   nn.Linear(hidden_size, num_labels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.score(x)


class TokenClassifierHead(nn.Module):
    """A decoder ``*ForTokenClassification``'s ``score``: one Linear on every token (its
    bias unless the config's ``token_classification_bias`` is false, as transformers)."""

    def __init__(self, hidden_size: int, config: Any) -> None:
        super().__init__()
        self.out_features = config.num_labels
        self.score = nn.Linear(hidden_size, config.num_labels,
                               bias=getattr(config, "token_classification_bias", True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.score(x)


def decoder_token_head(architecture: str, hidden_size: int, config: Any) -> nn.Module | None:
    """The per-token head a decoder checkpoint of ``architecture`` has, if any."""
    if architecture.endswith(REWARD_SUFFIXES):
        return RewardHead(hidden_size, config.num_labels)
    if is_token_classifier(architecture):
        return TokenClassifierHead(hidden_size, config)
    return None
