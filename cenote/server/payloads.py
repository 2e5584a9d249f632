"""Between HTTP bodies and the engine: request inputs to prompts, outputs to JSON.

The only place the server handles tensors, and only to turn them into lists or
bytes (``embed_dtype`` values in ``endianness`` byte order, as vLLM writes them).
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Callable
from typing import Any

import torch
from fastapi.responses import Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from cenote.inputs.prompts import Prompt

# Responses with more items than this are built and serialised on a thread:
# turning thousands of vectors into JSON takes long enough to stall every other
# client's request on the event loop.
_INLINE_RENDER_MAX_ITEMS = 64

# vLLM's embed_dtype names: the dtype each value is cast to, and the dtype of the same
# width its bits are written as (numpy, which clients decode with, has no bfloat16 or
# float8: bfloat16 is sent as float16 bits, float8 as uint8).
EMBED_DTYPES: dict[str, tuple[torch.dtype, torch.dtype]] = {
    "float32": (torch.float32, torch.float32),
    "float16": (torch.float16, torch.float16),
    "bfloat16": (torch.bfloat16, torch.float16),
    "fp8_e4m3": (torch.float8_e4m3fn, torch.uint8),
    "fp8_e5m2": (torch.float8_e5m2, torch.uint8),
}
# encoding_format values whose answer is the tensors' bytes as the body, not JSON.
BYTES_FORMATS = ("bytes", "bytes_only")


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


def tensor_bytes(data: torch.Tensor, embed_dtype: str = "float32",
                 endianness: str = "native") -> bytes:
    """``data``'s values cast to ``embed_dtype`` (rounded as torch rounds), flattened
    row by row, as bytes in ``endianness`` order: ``native`` is this machine's, as vLLM
    writes it (little-endian on x86 and Arm)."""
    dtype, bits = EMBED_DTYPES[embed_dtype]
    array = data.detach().to("cpu", dtype).contiguous().view(bits).numpy().reshape(-1)
    if endianness not in ("native", sys.byteorder):
        array = array.byteswap()
    return array.tobytes()


def float_payload(data: torch.Tensor, encoding_format: str, embed_dtype: str = "float32",
                  endianness: str = "native") -> list | str:
    """A pooled tensor as (nested) floats, or base64 of its ``tensor_bytes``."""
    if encoding_format == "base64":
        return base64.b64encode(tensor_bytes(data, embed_dtype, endianness)).decode("ascii")
    return data.tolist()


def bytes_response(tensors: list[torch.Tensor], embed_dtype: str, endianness: str,
                   metadata: dict[str, Any] | None) -> Response:
    """vLLM's ``bytes`` answer: the tensors' ``tensor_bytes`` back to back as the body.
    With ``metadata`` (the response's id, created, model and usage), a ``metadata``
    header of JSON places each tensor in the body: its index, embed_dtype, endianness,
    start and end offsets and shape (``bytes_only``: no header)."""
    chunks, items, offset = [], [], 0
    for index, tensor in enumerate(tensors):
        chunk = tensor_bytes(tensor, embed_dtype, endianness)
        items.append({"index": index, "embed_dtype": embed_dtype, "endianness": endianness,
                      "start": offset, "end": offset + len(chunk), "shape": list(tensor.shape)})
        chunks.append(chunk)
        offset += len(chunk)
    headers = None
    if metadata is not None:
        header = {"id": metadata["id"], "created": metadata["created"],
                  "model": metadata["model"], "data": items, "usage": metadata["usage"]}
        headers = {"metadata": json.dumps(header)}
    return Response(b"".join(chunks), headers=headers, media_type="application/octet-stream")


def sparse_payload(data: torch.Tensor) -> dict[str, list]:
    """A sparse pooled vector as its vocabulary ids (ascending) and weights."""
    data = data.coalesce()
    return {"indices": data.indices()[0].tolist(), "values": data.values().tolist()}


def json_response(body: BaseModel | list, status_code: int = 200) -> Response:
    """``body`` (a response model, or a plain list such as TEI's answers) as JSON."""
    content = body.model_dump_json() if isinstance(body, BaseModel) else json.dumps(body)
    return Response(content, status_code=status_code, media_type="application/json")


async def render(build: Callable[[], BaseModel | Response], num_items: int) -> Response:
    """Build a response (a body, serialised as JSON, or a finished response such as
    ``bytes_response``), off the event loop when it is big."""

    def respond() -> Response:
        body = build()
        return body if isinstance(body, Response) else json_response(body)

    if num_items <= _INLINE_RENDER_MAX_ITEMS:
        return respond()
    return await run_in_threadpool(respond)
