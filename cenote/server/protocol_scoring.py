"""The fields vLLM's ``/score`` and ``/rerank`` share beyond their inputs: how each pair
is composed (a chat template's arguments, ``instruction``) and cut (tokens per side)."""

from __future__ import annotations

from typing import Any

from pydantic import StrictInt, StrictStr

from cenote.inputs.score_prompts import ScoreOptions
from cenote.server.protocol_base import APIModel


class ScoringFields(APIModel):
    """``max_tokens_per_query`` / ``max_tokens_per_doc`` (0: no limit) cut each side
    before the pair is composed; ``chat_template_kwargs`` reach the score template
    (``--chat-template``), and ``instruction`` is its ``instruction`` argument unless
    ``chat_template_kwargs`` names one."""

    max_tokens_per_query: StrictInt = 0
    max_tokens_per_doc: StrictInt = 0
    instruction: StrictStr | None = None
    chat_template_kwargs: dict[str, Any] | None = None

    def score_options(self, chat_template: str | None) -> ScoreOptions:
        """These fields, with the server's score template, as the engine takes them."""
        kwargs = dict(self.chat_template_kwargs or {})
        if self.instruction is not None:
            kwargs.setdefault("instruction", self.instruction)
        return ScoreOptions(chat_template=chat_template, chat_template_kwargs=kwargs or None,
                            max_tokens_per_query=self.max_tokens_per_query,
                            max_tokens_per_doc=self.max_tokens_per_doc)
