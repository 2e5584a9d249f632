"""``/embed_sparse``: text-embeddings-inference's sparse route (SPLADE, BGE-M3's lexical
weights): per input, the non-zero ``{"index", "value"}`` entries over the vocabulary."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from pydantic import StrictBool, StrictStr

from cenote.params import PoolingParams
from cenote.server.context import ServerContext, get_context
from cenote.server.payloads import json_response, sparse_payload
from cenote.server.protocol_base import APIModel, Items

router = APIRouter()


class EmbedSparseRequest(APIModel):
    """TEI's body: ``inputs``, ``truncate`` (cut over-long inputs instead of refusing
    them), ``truncation_direction`` and ``prompt_name``."""

    model: str | None = None
    inputs: StrictStr | Items[StrictStr]
    truncate: StrictBool = False
    truncation_direction: Literal["Left", "Right", "left", "right"] = "Right"
    prompt_name: StrictStr | None = None


@router.post("/embed_sparse")
async def embed_sparse(body: EmbedSparseRequest,
                       ctx: ServerContext = Depends(get_context)) -> Response:
    m = ctx.model(body.model)
    texts = [body.inputs] if isinstance(body.inputs, str) else list(body.inputs)
    if not texts:
        raise ValueError("inputs must not be empty.")
    ctx.check_num_inputs(len(texts), "inputs")
    params = PoolingParams(truncation_side=body.truncation_direction.lower())
    outputs = await m.engine.encode(texts, "embed_sparse", params,
                                      -1 if body.truncate else None,
                                      prompt_name=body.prompt_name)
    vectors = []
    for output in outputs:
        payload = sparse_payload(output.outputs.data)
        vectors.append([{"index": i, "value": v}
                        for i, v in zip(payload["indices"], payload["values"], strict=True)])
    return json_response(vectors)

