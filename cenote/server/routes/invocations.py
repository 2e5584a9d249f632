"""``POST /invocations`` (Amazon SageMaker's one route): the body picks the API, as in
vLLM. The request types the model serves are tried in order (embeddings or
classification by the model's task, then rerank and score where it scores, then
pooling); the first the body validates as answers it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Body, Depends
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError

from cenote.server.context import ServerContext, get_context
from cenote.server.protocol import (
    ClassificationRequest,
    EmbeddingRequest,
    PoolingRequest,
    RerankRequest,
    ScoreRequest,
)
from cenote.server.routes.pooling import (
    create_classification,
    create_embeddings,
    create_pooling,
)
from cenote.server.routes.scoring import create_rerank, create_score

router = APIRouter()

Endpoint = Callable[[Any, ServerContext], Awaitable[Response]]


def invocation_types(ctx: ServerContext, model: str | None
                     ) -> list[tuple[type[BaseModel], Endpoint]]:
    """What a body sent to ``model`` may be, first match first."""
    m = ctx.model(model)
    types: list[tuple[type[BaseModel], Endpoint]] = []
    if m.engine.config.task == "embed":
        types.append((EmbeddingRequest, create_embeddings))
    if m.engine.config.task == "classify":
        types.append((ClassificationRequest, create_classification))
    if m.scores:
        types += [(RerankRequest, create_rerank), (ScoreRequest, create_score)]
    types.append((PoolingRequest, create_pooling))
    return types


@router.post("/invocations")
async def invocations(body: dict[str, Any] = Body(...),
                      ctx: ServerContext = Depends(get_context)) -> Response:
    """The first request type of the model that ``body`` validates as, answered."""
    model = body.get("model")
    types = invocation_types(ctx, model if isinstance(model, str) else None)
    for request_type, endpoint in types:
        try:
            request = request_type.model_validate(body)
        except ValidationError:
            continue
        return await endpoint(request, ctx)
    raise ValueError("Cannot find suitable handler for request. Expected one of: "
                     f"{[request_type.__name__ for request_type, _ in types]}")
