"""How a score pair becomes one input, beyond the tokenizer's text pair: a chat template
that receives the pair as messages with roles ``query`` and ``document`` (rerankers
trained on a prompt of their own: Qwen3-Reranker, mxbai-rerank-v2, bge-reranker-v2-gemma
and the like), its extra arguments (``instruction``), and a token limit per side, applied
to each text before the pair is put together."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cenote.inputs.chat import render_chat

# Arguments the template call sets itself; a request may not.
_RESERVED_KWARGS = frozenset({"chat_template", "tools", "tokenize"})


@dataclass(frozen=True)
class ScoreOptions:
    """A score request's composition options (vLLM's scoring request fields)."""

    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    # 0: no limit. Otherwise each query (document) keeps its first this many tokens.
    max_tokens_per_query: int = 0
    max_tokens_per_doc: int = 0

    def check(self, max_model_len: int) -> None:
        """``ValueError`` for limits no input could meet, and reserved template kwargs."""
        for name in ("max_tokens_per_query", "max_tokens_per_doc"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer")
            if value >= max_model_len:
                raise ValueError(f"{name} ({value}) must be less than max_model_len "
                                 f"({max_model_len}).")
        clash = _RESERVED_KWARGS & set(self.chat_template_kwargs or ())
        if clash:
            raise ValueError("chat_template_kwargs contains reserved keys that conflict with "
                             f"fixed scorer arguments: {sorted(clash)}")


def truncate_text_to_tokens(text: str, hf_tokenizer: Any, max_tokens: int) -> str:
    """``text`` cut after its first ``max_tokens`` tokens, at the character where the
    next token starts (offsets, not a decode round trip that could change the text)."""
    while text:
        offsets = hf_tokenizer(text, add_special_tokens=False,
                               return_offsets_mapping=True)["offset_mapping"]
        if len(offsets) <= max_tokens:
            return text
        if max_tokens == 0:
            return ""
        # Where the last kept token ends (or the next starts, if that is sooner); a
        # tokenizer may split the cut text differently, so it is counted again.
        end = min(offsets[max_tokens - 1][1], offsets[max_tokens][0])
        text = text[:min(end, len(text) - 1)]
    return text


def limit_pairs(pairs: Sequence[tuple[Any, Any]], options: ScoreOptions,
                hf_tokenizer: Any) -> list[tuple[Any, Any]]:
    """Each side's texts cut to its token limit (images stay as they are)."""
    def cut(value: Any, limit: int) -> Any:
        if not limit or not isinstance(value, str):
            return value
        return truncate_text_to_tokens(value, hf_tokenizer, limit)

    return [(cut(a, options.max_tokens_per_query), cut(b, options.max_tokens_per_doc))
            for a, b in pairs]


def render_pairs(pairs: Sequence[tuple[str, str]], options: ScoreOptions,
                 hf_tokenizer: Any) -> list[str]:
    """Each pair through the chat template, as the messages ``query`` then ``document``."""
    return [render_chat(hf_tokenizer, [{"role": "query", "content": a},
                                       {"role": "document", "content": b}],
                        chat_template=options.chat_template,
                        chat_template_kwargs=options.chat_template_kwargs)
            for a, b in pairs]
