import logging

from vllm import _standin

__getattr__ = _standin.module_getattr(__name__)

# vLLM's tests turn propagation of the "vllm" logger on to read its messages with caplog.
DEFAULT_LOGGING_CONFIG: dict = {"loggers": {"vllm": {"propagate": False}}}


def init_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)
