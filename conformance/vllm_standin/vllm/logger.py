import logging

from vllm import _standin

__getattr__ = _standin.module_getattr(__name__)

DEFAULT_LOGGING_CONFIG: dict = {}


def init_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)
