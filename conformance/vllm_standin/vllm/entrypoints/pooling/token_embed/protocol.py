from cenote.server.protocol import TokenEmbeddingResponse, TokenEmbeddingResponseData
from vllm import _standin

__getattr__ = _standin.module_getattr(__name__)

__all__ = ["TokenEmbeddingResponse", "TokenEmbeddingResponseData"]
