from cenote import LateChunkingParams, PoolingParams
from vllm import _standin

__getattr__ = _standin.module_getattr(__name__)

__all__ = ["LateChunkingParams", "PoolingParams"]
