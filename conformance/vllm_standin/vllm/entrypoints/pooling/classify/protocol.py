from cenote.server.protocol import ClassificationData, ClassificationResponse
from vllm import _standin

__getattr__ = _standin.module_getattr(__name__)

__all__ = ["ClassificationData", "ClassificationResponse"]
