"""Everything around the model: health, version, models, metrics, (de)tokenising."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from cenote.server.context import ServerContext, get_context
from cenote.server.errors import ModelNotFoundError, error_response
from cenote.server.payloads import json_response
from cenote.server.protocol import (
    DetokenizeRequest,
    DetokenizeResponse,
    ModelCard,
    ModelList,
    TokenizeRequest,
    TokenizeResponse,
    VersionResponse,
)
from cenote.version import __version__

router = APIRouter()


@router.api_route("/health", methods=["GET", "HEAD"])
@router.api_route("/ping", methods=["GET", "POST"])  # vLLM's (SageMaker's) name for it
async def health(ctx: ServerContext = Depends(get_context)) -> Response:
    """200 while the engine's worker is alive and making progress; 503 otherwise."""
    if not ctx.engine.is_running:
        return error_response(503, "The engine is not running.")
    stalled_s = ctx.engine.seconds_without_progress
    if stalled_s > ctx.limits.engine_stall_timeout_s:
        return error_response(503, f"The engine has been stuck for {stalled_s:.0f} s.")
    return Response(status_code=200)


@router.get("/version", response_model=VersionResponse)
async def version() -> Response:
    return json_response(VersionResponse(version=__version__))


def _model_card(ctx: ServerContext, name: str) -> ModelCard:
    # root names the model, not the folder it was loaded from (no internal paths).
    return ModelCard(id=name, root=ctx.served_model_names[0],
                     max_model_len=ctx.engine.config.max_model_len,
                     modalities=list(ctx.engine.config.modalities))


@router.get("/v1/models", response_model=ModelList)
async def list_models(ctx: ServerContext = Depends(get_context)) -> Response:
    return json_response(ModelList(data=[_model_card(ctx, name)
                                         for name in ctx.served_model_names]))


@router.get("/v1/models/{model_id:path}", response_model=ModelCard)
async def retrieve_model(model_id: str, ctx: ServerContext = Depends(get_context)) -> Response:
    """OpenAI's ``models.retrieve``: the card of a served name, else 404."""
    if not model_id:  # /v1/models/ names no model (model_name("") is the default one)
        raise ModelNotFoundError(model_id)
    return json_response(_model_card(ctx, ctx.model_name(model_id)))


@router.get("/metrics")
async def metrics(ctx: ServerContext = Depends(get_context)) -> Response:
    """Prometheus text exposition."""
    return Response(ctx.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.post("/tokenize", response_model=TokenizeResponse)
async def tokenize(body: TokenizeRequest, ctx: ServerContext = Depends(get_context)) -> Response:
    """Token ids of a prompt, as the model would see it (no length limit applied)."""
    ctx.model_name(body.model)
    prompt = body.prompt if body.messages is None else await ctx.render_chat(body)
    tokens = await ctx.engine.tokenize(prompt, body.special_tokens)
    token_strs = await ctx.engine.token_strings(tokens) if body.return_token_strs else None
    return json_response(TokenizeResponse(count=len(tokens),
                                          max_model_len=ctx.engine.config.max_model_len,
                                          tokens=tokens, token_strs=token_strs))


@router.post("/detokenize", response_model=DetokenizeResponse)
async def detokenize(body: DetokenizeRequest,
                     ctx: ServerContext = Depends(get_context)) -> Response:
    ctx.model_name(body.model)
    return json_response(DetokenizeResponse(prompt=await ctx.engine.detokenize(body.tokens)))
