"""vLLM's cache settings, of which its test runner reads one default."""

from vllm import _standin

__getattr__ = _standin.module_getattr(__name__)


class CacheConfig:
    DEFAULT_GPU_MEMORY_UTILIZATION = 0.92
