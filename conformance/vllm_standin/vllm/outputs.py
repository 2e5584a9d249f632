from cenote import (
    ClassificationOutput,
    ClassificationRequestOutput,
    EmbeddingOutput,
    EmbeddingRequestOutput,
    LateChunk,
    LateChunkingMetadata,
    PoolingOutput,
    PoolingRequestOutput,
    ScoringOutput,
    ScoringRequestOutput,
)
from vllm import _standin

__getattr__ = _standin.module_getattr(__name__)

__all__ = ["ClassificationOutput", "ClassificationRequestOutput", "EmbeddingOutput",
           "EmbeddingRequestOutput", "LateChunk", "LateChunkingMetadata",
           "PoolingOutput", "PoolingRequestOutput",
           "ScoringOutput", "ScoringRequestOutput"]
