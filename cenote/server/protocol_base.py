"""What every request and response body shares: the base model, the fields every pooling
request accepts, and the id rules."""

from __future__ import annotations

import time
import uuid
from contextvars import ContextVar
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

# The client's X-Request-Id, for the request being answered (set by the request guard).
client_request_id: ContextVar[str | None] = ContextVar("client_request_id", default=None)


T = TypeVar("T")

# A list in a request body: validation stops at its first bad item. Without it a list of
# a million wrongly-typed items under a union (``input``, ``text_2``) makes a million
# errors per branch, and building them took 80 s of the event loop.
Items = Annotated[list[T], Field(fail_fast=True)]


def random_id(prefix: str, request_id: str | None = None) -> str:
    """A response id: the client's X-Request-Id when it sent one, else the body's
    ``request_id`` (as vLLM), else random."""
    return f"{prefix}-{client_request_id.get() or request_id or uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


class APIModel(BaseModel):
    # OpenAI clients and SDK wrappers send fields of their own (e.g. ``user``
    # extras); unknown fields are ignored as OpenAI-compatible servers do.
    model_config = ConfigDict(extra="ignore")


class PoolingRequestFields(APIModel):
    """What every pooling request may carry beside its inputs, as vLLM's: ``request_id``
    (the response id's suffix, unless an X-Request-Id header names one); ``priority``,
    accepted but not acted on (requests share batches fairly, in arrival order);
    ``cache_salt`` (there is no prefix cache to salt), ``mm_processor_kwargs`` and
    ``media_io_kwargs``, accepted and checked to be objects."""

    request_id: StrictStr | None = None
    priority: StrictInt = Field(default=0, ge=-(2**63), le=2**63 - 1)
    cache_salt: StrictStr | None = Field(default=None, min_length=1, max_length=1024)
    mm_processor_kwargs: dict[str, Any] | None = None
    media_io_kwargs: dict[str, dict[str, Any]] | None = None

    def response_id(self, prefix: str) -> str:
        return random_id(prefix, self.request_id)
