from vllm import _standin

__getattr__ = _standin.module_getattr(__name__)
