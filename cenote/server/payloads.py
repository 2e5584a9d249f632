"""Between HTTP bodies and the engine: request inputs to prompts, outputs to JSON.

The only place the server handles tensors, and only to turn them into lists or
little-endian float32 bytes.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable

import numpy as np
import torch
from fastapi.responses import Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from cenote.inputs.prompts import Prompt

# Responses with more items than this are built and serialised on a thread:
# turning thousands of vectors into JSON takes long enough to stall every other
# client's request on the event loop.
_INLINE_RENDER_MAX_ITEMS = 64


def prompts_from_input(value: str | list[str] | list[int] | list[list[int]]) -> list[Prompt]:
    """The OpenAI ``input`` union as engine prompts (texts or token-id dicts)."""
    if isinstance(value, str):
        return [value]
    if not value:
        raise ValueError("input must not be empty.")
    if isinstance(value[0], int):
        return [{"prompt_token_ids": value}]
    if isinstance(value[0], list):
        return [{"prompt_token_ids": ids} for ids in value]
    return list(value)


def float_payload(data: torch.Tensor, encoding_format: str) -> list | str:
    """A pooled tensor as (nested) floats, or base64 of its float32 bytes, little-endian."""
    if encoding_format == "base64":
        array = data.detach().cpu().numpy().astype("<f4", copy=False)
        return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")
    return data.tolist()


def sparse_payload(data: torch.Tensor) -> dict[str, list]:
    """A sparse pooled vector as its vocabulary ids (ascending) and weights."""
    data = data.coalesce()
    return {"indices": data.indices()[0].tolist(), "values": data.values().tolist()}


def json_response(body: BaseModel | list, status_code: int = 200) -> Response:
    """``body`` (a response model, or a plain list such as TEI's answers) as JSON."""
    content = body.model_dump_json() if isinstance(body, BaseModel) else json.dumps(body)
    return Response(content, status_code=status_code, media_type="application/json")


async def render(build: Callable[[], BaseModel], num_items: int) -> Response:
    """Build a response body and serialise it, off the event loop when it is big."""
    if num_items <= _INLINE_RENDER_MAX_ITEMS:
        return json_response(build())
    return await run_in_threadpool(lambda: json_response(build()))
