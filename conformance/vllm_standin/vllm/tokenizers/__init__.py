from typing import Any

from vllm import _standin

__getattr__ = _standin.module_getattr(__name__)


def get_tokenizer(tokenizer_name: str, *args: Any, trust_remote_code: bool = False,
                  **kwargs: Any) -> Any:
    from transformers import AutoTokenizer

    kwargs.pop("tokenizer_mode", None)
    return AutoTokenizer.from_pretrained(tokenizer_name, *args,
                                         trust_remote_code=trust_remote_code, **kwargs)
