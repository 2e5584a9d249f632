from cenote.server.protocol import RerankResponse, ScoreResponse
from vllm import _standin

__getattr__ = _standin.module_getattr(__name__)

__all__ = ["RerankResponse", "ScoreResponse"]
