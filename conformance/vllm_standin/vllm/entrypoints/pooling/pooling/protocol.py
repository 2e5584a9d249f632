from cenote.server.protocol import PoolingRequest, PoolingResponse, PoolingResponseData
from vllm import _standin

__getattr__ = _standin.module_getattr(__name__)

PoolingCompletionRequest = PoolingRequest

__all__ = ["PoolingCompletionRequest", "PoolingResponse", "PoolingResponseData"]
