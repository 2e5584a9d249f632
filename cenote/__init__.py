"""cenote: a fast engine and OpenAI-compatible server for pooling models."""

import os

# Before torch loads its OpenMP runtime (libgomp), which reads these once.
# By default an OpenMP thread waiting at a barrier spins for a long while
# (GOMP_SPINCOUNT 300000) before sleeping, so when the server's event loop,
# tokeniser or a neighbour process needs a core, the spinning thread takes it
# from the one everybody waits for: on 2 shared cores a 50 ms batch took 0.8 s
# and requests timed out. A short spin, then sleep, keeps that from happening
# (p90 45 ms instead of 122 ms beside a busy process) and, unlike sleeping at
# once (OMP_WAIT_POLICY=PASSIVE), still catches the next parallel region of
# the same forward pass: a one-sentence batch 3.0 ms vs 5.4 ms passive, 2.7 ms
# spinning (benchmarks/README.md, "Threads"). Either variable set by the user
# wins; neither has an effect if torch was imported before cenote.
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = "3000"

from cenote.config import ModelConfig, PoolerConfig, PoolingType
from cenote.config.lora import LoRARequest
from cenote.exceptions import VLLMValidationError
from cenote.llm import LLM
from cenote.outputs import (
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
    SparseEmbeddingOutput,
    SparseEmbeddingRequestOutput,
)
from cenote.params import LateChunkingParams, PoolingParams
from cenote.version import __version__

__all__ = [
    "LLM",
    "ClassificationOutput",
    "ClassificationRequestOutput",
    "EmbeddingOutput",
    "EmbeddingRequestOutput",
    "LateChunk",
    "LateChunkingMetadata",
    "LateChunkingParams",
    "LoRARequest",
    "ModelConfig",
    "PoolerConfig",
    "PoolingOutput",
    "PoolingParams",
    "PoolingRequestOutput",
    "PoolingType",
    "ScoringOutput",
    "ScoringRequestOutput",
    "SparseEmbeddingOutput",
    "SparseEmbeddingRequestOutput",
    "VLLMValidationError",
    "__version__",
]
