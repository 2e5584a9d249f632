from cenote.server.protocol import (
    IOProcessorResponse,
    PoolingRequest,
    PoolingResponse,
    PoolingResponseData,
)
from vllm import _standin

__getattr__ = _standin.module_getattr(__name__)

PoolingCompletionRequest = PoolingRequest

__all__ = ["IOProcessorResponse", "PoolingCompletionRequest", "PoolingResponse",
           "PoolingResponseData"]
