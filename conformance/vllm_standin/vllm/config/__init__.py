from cenote import ModelConfig, PoolerConfig
from vllm import _standin

__getattr__ = _standin.module_getattr(__name__)

__all__ = ["ModelConfig", "PoolerConfig"]
