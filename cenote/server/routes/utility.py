"""Everything around the model: health, version, models, metrics, (de)tokenising."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from cenote.config.lora import LoRARequest
from cenote.server.context import ServedModel, ServerContext, get_context
from cenote.server.errors import error_response
from cenote.server.payloads import json_response
from cenote.server.protocol_utility import (
    DetokenizeRequest,
    DetokenizeResponse,
    EngineCapacity,
    HealthResponse,
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
    """200 while every model has an engine alive and making progress; 503 otherwise.
    With engines down (data-parallel engines restarting), still 200, and the body says
    which: ``{"status": "degraded", "engines": [...]}``. While the server drains, the
    guard answers ``/health`` (readiness) with 503 but lets ``/ping`` (liveness) here."""
    engines = []
    for model in ctx.models:
        engine = model.engine
        if not engine.is_running:
            return error_response(503, f"The engine of {model.names[0]} is not running.")
        stalled_s = engine.seconds_without_progress
        if stalled_s > ctx.limits.engine_stall_timeout_s:
            return error_response(503, f"The engine of {model.names[0]} has been stuck for "
                                       f"{stalled_s:.0f} s.")
        engines.append((model.names[0], engine.num_alive, engine.num_engines))
    if all(alive == total for _, alive, total in engines):
        return Response(status_code=200)
    return json_response(HealthResponse(status="degraded", engines=[
        EngineCapacity(model=name, alive=alive, total=total) for name, alive, total in engines]))


@router.get("/version", response_model=VersionResponse)
async def version() -> Response:
    return json_response(VersionResponse(version=__version__))


def _model_card(model: ServedModel, name: str) -> ModelCard:
    # root names the model, not the folder it was loaded from (no internal paths).
    config = model.engine.config
    return ModelCard(id=name, root=model.names[0], max_model_len=config.max_model_len,
                     modalities=list(config.modalities))


def _adapter_card(model: ServedModel, adapter: LoRARequest) -> ModelCard:
    # As vLLM: root is the adapter's folder, parent the model it adapts.
    return ModelCard(id=adapter.lora_name, root=adapter.lora_path,
                     parent=adapter.base_model_name or model.names[0],
                     max_model_len=model.engine.config.max_model_len,
                     modalities=list(model.engine.config.modalities))


@router.get("/v1/models", response_model=ModelList)
async def list_models(ctx: ServerContext = Depends(get_context)) -> Response:
    """The served names, then the LoRA adapters (``parent``: their base), as vLLM."""
    cards = [_model_card(model, name) for model in ctx.models for name in model.names]
    cards += [_adapter_card(model, adapter) for model, adapter in ctx.adapters()]
    return json_response(ModelList(data=cards))


@router.get("/v1/models/{model_id:path}", response_model=ModelCard)
async def retrieve_model(model_id: str, ctx: ServerContext = Depends(get_context)) -> Response:
    """OpenAI's ``models.retrieve``: the card of a served name or adapter, else 404."""
    for model, adapter in ctx.adapters():
        if adapter.lora_name == model_id:
            return json_response(_adapter_card(model, adapter))
    return json_response(_model_card(ctx.served_as(model_id), model_id))


@router.get("/metrics")
async def metrics(ctx: ServerContext = Depends(get_context)) -> Response:
    """Prometheus text exposition."""
    return Response(ctx.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.post("/tokenize", response_model=TokenizeResponse)
async def tokenize(body: TokenizeRequest, ctx: ServerContext = Depends(get_context)) -> Response:
    """Token ids of a prompt, as the model would see it (no length limit applied)."""
    m = ctx.model(body.model)
    prompt = body.prompt if body.messages is None else await m.render_chat(body)
    tokens = await m.engine.tokenize(prompt, body.special_tokens)
    token_strs = await m.engine.token_strings(tokens) if body.return_token_strs else None
    return json_response(TokenizeResponse(count=len(tokens),
                                          max_model_len=m.engine.config.max_model_len,
                                          tokens=tokens, token_strs=token_strs))


@router.post("/detokenize", response_model=DetokenizeResponse)
async def detokenize(body: DetokenizeRequest,
                     ctx: ServerContext = Depends(get_context)) -> Response:
    m = ctx.model(body.model)
    return json_response(DetokenizeResponse(prompt=await m.engine.detokenize(body.tokens)))
