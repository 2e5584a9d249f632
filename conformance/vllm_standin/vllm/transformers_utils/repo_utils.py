from collections.abc import Callable
from typing import Any

from huggingface_hub import HfApi

from vllm import _standin

__getattr__ = _standin.module_getattr(__name__)



def hf_api() -> HfApi:
    return HfApi()


def with_retry(func: Callable[[], Any], log_msg: str = "", **_: Any) -> Any:
    return func()
