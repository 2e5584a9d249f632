"""cenote: a fast engine and OpenAI-compatible server for pooling models."""

from cenote.config import ModelConfig, PoolerConfig, PoolingType
from cenote.llm import LLM
from cenote.outputs import (
    ClassificationOutput,
    ClassificationRequestOutput,
    EmbeddingOutput,
    EmbeddingRequestOutput,
    PoolingOutput,
    PoolingRequestOutput,
    ScoringOutput,
    ScoringRequestOutput,
)
from cenote.params import PoolingParams

__version__ = "0.1.0"

__all__ = [
    "LLM",
    "ClassificationOutput",
    "ClassificationRequestOutput",
    "EmbeddingOutput",
    "EmbeddingRequestOutput",
    "ModelConfig",
    "PoolerConfig",
    "PoolingOutput",
    "PoolingParams",
    "PoolingRequestOutput",
    "PoolingType",
    "ScoringOutput",
    "ScoringRequestOutput",
    "__version__",
]
