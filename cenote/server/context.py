"""What every route needs: the engine, the served model names and the metrics."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import Request

from cenote.engine.async_engine import AsyncPoolingEngine
from cenote.server.errors import ModelNotFoundError
from cenote.server.metrics import ServerMetrics
from cenote.server.protocol import ChatFields


@dataclass(frozen=True)
class ServerLimits:
    """What the server refuses, and when it gives up; each is a ``cenote serve`` flag.

    (Admission control by queued tokens belongs to the engine: see
    ``AsyncPoolingEngine(max_queued_tokens=...)``.)
    """

    max_request_body_bytes: int = 32 * 1024 * 1024
    """Bodies larger than this are refused with 413 before they are parsed."""
    max_inputs_per_request: int = 2048
    """Inputs (texts, token-id prompts, score pairs, rerank documents) per request; 400 above."""
    request_timeout_s: float = 120.0
    """A request still unanswered after this long gets 504 and its queued work is dropped."""
    engine_stall_timeout_s: float = 120.0
    """/health fails once the busy engine has not started or finished a batch for this long."""


@dataclass
class ServerContext:
    engine: AsyncPoolingEngine
    served_model_names: list[str]
    metrics: ServerMetrics
    limits: ServerLimits = field(default_factory=ServerLimits)
    # Set on SIGTERM: new requests get 503 while those in flight finish.
    draining: bool = False
    # --chat-template: the template for requests with messages, instead of the tokenizer's.
    chat_template: str | None = None
    # --trust-request-chat-template: a request's own Jinja chat template is rendered.
    trust_request_chat_template: bool = False

    def model_name(self, requested: str | None) -> str:
        """The name to answer with; an unknown ``model`` is a 404 (OpenAI's behaviour).
        No ``model``, or an empty one, means the served model (as vLLM)."""
        if not requested:
            return self.served_model_names[0]
        if requested not in self.served_model_names:
            raise ModelNotFoundError(requested)
        return requested

    async def render_chat(self, body: ChatFields) -> str:
        """A chat-form request's ``messages`` as the text the model reads."""
        if body.chat_template is not None and not self.trust_request_chat_template:
            raise ValueError("This server does not take chat templates in requests (start it "
                             "with --trust-request-chat-template to allow them).")
        return await self.engine.render_chat(
            [m.as_dict() for m in body.messages],
            chat_template=body.chat_template or self.chat_template,
            add_generation_prompt=body.add_generation_prompt,
            continue_final_message=body.continue_final_message,
            chat_template_kwargs=body.chat_template_kwargs)

    def check_num_inputs(self, count: int, what: str = "input") -> None:
        """400 when a request carries more inputs than ``max_inputs_per_request``."""
        cap = self.limits.max_inputs_per_request
        if count > cap:
            raise ValueError(f"{what} has {count} items; this server takes at most {cap} "
                             "per request. Split it into several requests.")


async def get_context(request: Request) -> ServerContext:
    """FastAPI dependency: the app's :class:`ServerContext`.

    ``async`` on purpose: FastAPI runs plain ``def`` dependencies on its thread
    pool, a thread hop per request for a dictionary lookup.
    """
    return request.app.state.context
