"""vLLM's prompt types: plain dicts, which cenote's ``LLM`` reads as they are."""

from typing import Any, TypedDict

from vllm import _standin

__getattr__ = _standin.module_getattr(__name__)


class TokensPrompt(TypedDict, total=False):
    prompt_token_ids: list[int]
    multi_modal_data: Any


class TextPrompt(TypedDict, total=False):
    prompt: str
    multi_modal_data: Any


PromptType = str | TextPrompt | TokensPrompt
