from vllm import _standin

__getattr__ = _standin.module_getattr(__name__)


def get_engine_process_shutdown_timeout(*timeouts: float | None) -> float:
    return 5.0
