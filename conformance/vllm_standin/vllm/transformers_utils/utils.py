from vllm import _standin

__getattr__ = _standin.module_getattr(__name__)


def maybe_model_redirect(model: str) -> str:
    return model
