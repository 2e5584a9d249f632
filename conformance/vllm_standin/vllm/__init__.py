"""A stand-in ``vllm`` for running vLLM 0.34's pooling tests against cenote.

Only the conformance harness puts this folder on ``PYTHONPATH``. The public names
vLLM's tests use map to cenote's own objects, unchanged: what cenote lacks shows up as
a failing test, never as an adapter here. ``_standin`` explains what happens to the rest.
"""

from typing import Any

from cenote import (
    LLM,
    ClassificationOutput,
    ClassificationRequestOutput,
    EmbeddingOutput,
    EmbeddingRequestOutput,
    PoolingOutput,
    PoolingParams,
    PoolingRequestOutput,
    ScoringOutput,
    ScoringRequestOutput,
)
from vllm import _standin
from vllm.inputs import TokensPrompt

_standin.install()

__version__ = "0.34.0"
__getattr__ = _standin.module_getattr(__name__)

SamplingParams: Any = _standin.placeholder("vllm.SamplingParams")

__all__ = [
    "LLM",
    "ClassificationOutput",
    "ClassificationRequestOutput",
    "EmbeddingOutput",
    "EmbeddingRequestOutput",
    "PoolingOutput",
    "PoolingParams",
    "PoolingRequestOutput",
    "ScoringOutput",
    "ScoringRequestOutput",
    "TokensPrompt",
]
