"""What every request and response body shares: the base model and the id rules."""

from __future__ import annotations

import time
import uuid
from contextvars import ContextVar

from pydantic import BaseModel, ConfigDict

# The client's X-Request-Id, for the request being answered (set by the request guard).
client_request_id: ContextVar[str | None] = ContextVar("client_request_id", default=None)


def random_id(prefix: str) -> str:
    """A response id: the client's X-Request-Id when it sent one (as vLLM), else random."""
    return f"{prefix}-{client_request_id.get() or uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


class APIModel(BaseModel):
    # OpenAI clients and SDK wrappers send fields of their own (e.g. ``user``
    # extras); unknown fields are ignored as OpenAI-compatible servers do.
    model_config = ConfigDict(extra="ignore")
