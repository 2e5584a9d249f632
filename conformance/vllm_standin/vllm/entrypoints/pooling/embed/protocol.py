from cenote.server.protocol import EmbeddingRequest, EmbeddingResponse, EmbeddingResponseData
from cenote.server.protocol_cohere import CohereEmbedRequest, CohereEmbedResponse
from vllm import _standin

__getattr__ = _standin.module_getattr(__name__)

EmbeddingCompletionRequest = EmbeddingRequest

__all__ = ["CohereEmbedRequest", "CohereEmbedResponse", "EmbeddingCompletionRequest",
           "EmbeddingResponse", "EmbeddingResponseData"]
