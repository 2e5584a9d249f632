"""Output classes returned by the offline API (vLLM's names and fields)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

import torch


@dataclass
class PoolingOutput:
    """Raw pooled data: ``[hidden]`` for a sequence, ``[num_tokens, hidden]`` for ALL."""

    data: torch.Tensor


class EmbeddingOutput:
    """vLLM's embedding output: ``embedding``, a list of floats. It is made from the
    pooled vector on first read: a caller that reads ``data`` (the vector as a tensor,
    a view of its batch's output) never pays for a Python float per dimension, which
    cost 18 us a text of MiniLM's 384 (benchmarks/host_overhead.py)."""

    __slots__ = ("_embedding", "data")

    def __init__(self, embedding: list[float] | torch.Tensor) -> None:
        if isinstance(embedding, torch.Tensor):
            if embedding.ndim != 1:
                raise ValueError("pooled data should be 1-D for an embedding")
            self.data, self._embedding = embedding, None
        else:
            self._embedding = list(embedding)
            self.data = torch.tensor(self._embedding, dtype=torch.float32)

    @property
    def embedding(self) -> list[float]:
        if self._embedding is None:
            self._embedding = self.data.tolist()
        return self._embedding

    @property
    def hidden_size(self) -> int:
        return self.data.shape[0]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EmbeddingOutput):
            return NotImplemented
        return self.embedding == other.embedding

    __hash__ = None  # mutable, as the dataclass it replaces

    def __repr__(self) -> str:  # as vLLM's: not hundreds of floats
        return f"EmbeddingOutput(hidden_size={self.hidden_size})"

    @classmethod
    def from_base(cls, output: PoolingOutput) -> EmbeddingOutput:
        return cls(output.data)


@dataclass
class ClassificationOutput:
    probs: list[float]

    @property
    def num_classes(self) -> int:
        return len(self.probs)

    def __repr__(self) -> str:
        return f"ClassificationOutput(num_classes={self.num_classes})"

    @classmethod
    def from_base(cls, output: PoolingOutput) -> ClassificationOutput:
        if output.data.ndim != 1:
            raise ValueError("pooled data should be 1-D for a classification")
        return cls(output.data.tolist())


@dataclass
class ScoringOutput:
    score: float

    @classmethod
    def from_base(cls, output: PoolingOutput) -> ScoringOutput:
        data = output.data
        if data.numel() != 1:
            raise ValueError("pooled data should hold one value for a score")
        return cls(float(data.reshape(()).item()))


@dataclass
class SparseEmbeddingOutput:
    """A sparse vector over the vocabulary: token ids (ascending) and their weights."""

    indices: list[int]
    values: list[float]

    def __repr__(self) -> str:
        return f"SparseEmbeddingOutput(nnz={len(self.indices)})"

    @classmethod
    def from_base(cls, output: PoolingOutput) -> SparseEmbeddingOutput:
        data = output.data
        if not data.is_sparse:
            raise ValueError("pooled data should be a sparse tensor for a sparse embedding")
        data = data.coalesce()
        return cls(data.indices()[0].tolist(), data.values().tolist())


@dataclass(frozen=True)
class LateChunk:
    """One chunk of a late-chunked text: its tokens ``[start, end)`` and the characters
    of the submitted text they came from (None for a chunk of special tokens only)."""

    token_range: tuple[int, int]
    char_range: tuple[int, int] | None


@dataclass(frozen=True)
class LateChunkingMetadata:
    """Where each vector of a late-chunked output comes from (vLLM's): row ``i`` of the
    output is ``chunks[i]``."""

    chunk_size: int
    input_tokens: int
    chunks: list[LateChunk]
    strategy: str = "fixed_tokens"


OutputT = TypeVar("OutputT")


@dataclass
class PoolingRequestOutput(Generic[OutputT]):
    """The result for one prompt."""

    request_id: str
    outputs: OutputT
    prompt_token_ids: list[int]
    finished: bool = True
    # The tokens the model read for this prompt, what usage counts: its token ids, or an
    # image's vision tokens (its patches, and a class token where the tower has one).
    num_input_tokens: int | None = None
    # With late chunking: the token and character range of each output row.
    late_chunking: LateChunkingMetadata | None = None

    def __post_init__(self) -> None:
        if self.num_input_tokens is None:
            self.num_input_tokens = len(self.prompt_token_ids)

    @staticmethod
    def output_of(data: torch.Tensor) -> OutputT:
        """The ``outputs`` of a prompt whose pooled data is ``data``."""
        return PoolingOutput(data)


class EmbeddingRequestOutput(PoolingRequestOutput[EmbeddingOutput]):
    output_of = staticmethod(EmbeddingOutput)  # straight from the tensor, no list made

    @classmethod
    def from_base(cls, out: PoolingRequestOutput) -> EmbeddingRequestOutput:
        return cls(out.request_id, EmbeddingOutput.from_base(out.outputs), out.prompt_token_ids,
                   num_input_tokens=out.num_input_tokens)


class ClassificationRequestOutput(PoolingRequestOutput[ClassificationOutput]):
    @staticmethod
    def output_of(data: torch.Tensor) -> ClassificationOutput:
        return ClassificationOutput.from_base(PoolingOutput(data))

    @classmethod
    def from_base(cls, out: PoolingRequestOutput) -> ClassificationRequestOutput:
        return cls(out.request_id, ClassificationOutput.from_base(out.outputs),
                   out.prompt_token_ids, num_input_tokens=out.num_input_tokens)


class ScoringRequestOutput(PoolingRequestOutput[ScoringOutput]):
    @staticmethod
    def output_of(data: torch.Tensor) -> ScoringOutput:
        return ScoringOutput.from_base(PoolingOutput(data))

    @classmethod
    def from_base(cls, out: PoolingRequestOutput) -> ScoringRequestOutput:
        return cls(out.request_id, ScoringOutput.from_base(out.outputs), out.prompt_token_ids,
                   num_input_tokens=out.num_input_tokens)


class SparseEmbeddingRequestOutput(PoolingRequestOutput[SparseEmbeddingOutput]):
    @staticmethod
    def output_of(data: torch.Tensor) -> SparseEmbeddingOutput:
        return SparseEmbeddingOutput.from_base(PoolingOutput(data))

    @classmethod
    def from_base(cls, out: PoolingRequestOutput) -> SparseEmbeddingRequestOutput:
        return cls(out.request_id, SparseEmbeddingOutput.from_base(out.outputs),
                   out.prompt_token_ids, num_input_tokens=out.num_input_tokens)
