"""Chat messages rendered to prompt text through a chat template."""

from __future__ import annotations

from typing import Any

from cenote.inputs.prompts import check_unicode


def render_chat(hf_tokenizer: Any, messages: list[dict[str, Any]], *,
                chat_template: str | None = None,
                add_generation_prompt: bool = False,
                continue_final_message: bool = False,
                chat_template_kwargs: dict[str, Any] | None = None) -> str:
    """``messages`` as text through the tokenizer's chat template (or ``chat_template``);
    ``ValueError`` when there is none or it fails on them."""
    if chat_template is None and not getattr(hf_tokenizer, "chat_template", None):
        raise ValueError("This model's tokenizer has no chat template; send input "
                         "instead of messages, or a chat_template.")
    for i, message in enumerate(messages):
        if isinstance(message.get("content"), str):
            check_unicode(message["content"], f"messages[{i}].content")
    # chat_template_kwargs may set the two flags too (it wins), never the call's own.
    options = {"add_generation_prompt": add_generation_prompt,
               "continue_final_message": continue_final_message,
               **{k: v for k, v in (chat_template_kwargs or {}).items()
                  if k not in ("conversation", "chat_template", "tokenize")}}
    try:
        return hf_tokenizer.apply_chat_template(messages, chat_template=chat_template,
                                                tokenize=False, **options)
    except Exception as exc:  # jinja's errors, or the template's own raise
        raise ValueError(f"The chat template failed on these messages: "
                         f"{type(exc).__name__}: {exc}") from None
