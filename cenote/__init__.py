"""cenote: a fast engine and OpenAI-compatible server for pooling models."""

import os

# Before torch loads its OpenMP runtime, which reads this once. With the default
# (spin, then sleep), an OpenMP thread waiting at a barrier keeps its core busy,
# so when the server's event loop, tokeniser or a neighbour process needs a core,
# the team stalls: on 2 shared cores a 250-token batch took 0.8 s instead of
# 50 ms. Passive waiting measured as fast when the machine is quiet (2000
# paragraphs in 10.3 s vs 11.3 s) and kept p90 latency beside a busy process at
# 42 ms instead of 70-80 ms (benchmarks/README.md, "Threads"). A value the user
# set wins; it has no effect if torch was imported before cenote.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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
