"""What a pooling model declares to the runner and the registry, instead of being probed."""

from __future__ import annotations

from typing import NamedTuple, Protocol

import torch
from torch import nn

from cenote.models.batch import PackedBatch


class AttentionShape(NamedTuple):
    """The attention a native model runs, for the load-time kernel check."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    causal: bool


class PoolingModel(nn.Module):
    """A model that maps a :class:`PackedBatch` to hidden states ``[rows, hidden]``.

    Subclasses set what they can do; the defaults describe a model that can do none
    of it.
    """

    # Whether ``forward`` honours ``batch.pooled``: the last layer then computes only
    # each sequence's pooled row and the output has the rows of ``batch.pooled_rows``.
    computes_pooled_rows_only: bool = False
    # Whether ``forward`` honours ``batch.pooled == "mean"``: it then returns each
    # sequence's mean row itself (a static model's embedding bag).
    computes_mean_rows: bool = False
    # Whether its batches run on one CPU thread: a static model's math per batch is
    # smaller than waking torch's other threads costs (they then spin, against the
    # tokenizer's threads: 5x slower batches on a busy 2-core machine).
    single_threaded: bool = False
    # Whether ``forward`` returns one row per sequence itself (a dual encoder's
    # projected text features) instead of one per token.
    returns_pooled_rows: bool = False
    # Whether ``image_features`` embeds pre-processed images (a dual encoder).
    embeds_images: bool = False
    # Whether ``use_vocab_head`` loads a masked-LM head over the vocabulary (SPLADE's).
    builds_vocab_head: bool = False
    # Whether it is causal and runs a batch of ``prefix_sharing.DistinctRows`` (the rows
    # its sequences share, once): a decoder whose attention is ``prefix_sharing.attention``.
    shares_prefixes: bool = False
    # Whether ``use_head_from_tokens`` builds the classifier from LM-head rows
    # (vLLM's classifier_from_token).
    builds_head_from_tokens: bool = False
    # The linears LoRA adapters may adapt (cenote.models.lora): ``(pattern, our linear,
    # fused parts)``, the pattern matching the end of a checkpoint module's name, our
    # linear a ``re`` template of it, and for a fused projection the parts in output
    # order with ``(?P<part>...)`` naming the part. Empty: the model takes no adapters.
    lora_modules: tuple[tuple[str, str, tuple[str, ...] | None], ...] = ()

    def __init__(self) -> None:
        super().__init__()
        # The sequence classifier (classify/score) and per-token head (reward models) the
        # pooler applies, where the task has one.
        self.classifier: nn.Module | None = None
        self.token_head: nn.Module | None = None
        # A classifier that scores the last token that is not this pad token, as
        # transformers' decoder classifiers do (see ``ModelRunner``); None: the last.
        self.classify_pad_token_id: int | None = None
        # The masked-LM head over the vocabulary (SPLADE's), where the checkpoint has one.
        self.vocab_head: nn.Module | None = None
        # Set by native models, whose attention kernels are checked at load.
        self.attention_shape: AttentionShape | None = None

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        raise NotImplementedError

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not embed images.")

    def use_vocab_head(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} has no masked-LM head here.")

    def use_head_from_tokens(self, method: str, token_ids: list[int]) -> None:
        raise NotImplementedError(f"{type(self).__name__} cannot build a head from tokens.")


class Vocabulary(Protocol):
    """What loading a model may ask of its tokenizer."""

    def vocab_ids(self, tokens: list[str]) -> list[int]:
        """The ids of ``tokens`` (``ValueError`` for one the vocabulary lacks)."""

    def boundary_ids(self) -> frozenset[int]:
        """The ids of the [CLS]/BOS, EOS, padding and unknown tokens it has."""
