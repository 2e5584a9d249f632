from typing import Any

from vllm import _standin

__getattr__ = _standin.module_getattr(__name__)


def is_list_of(value: Any, typ: Any, *, check: str = "first") -> bool:
    if not isinstance(value, list):
        return False
    items = value[:1] if check == "first" else value
    return all(isinstance(v, typ) for v in items)
