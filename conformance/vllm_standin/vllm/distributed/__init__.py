import gc

from vllm import _standin

__getattr__ = _standin.module_getattr(__name__)


def cleanup_dist_env_and_memory(shutdown_ray: bool = False) -> None:
    gc.collect()
