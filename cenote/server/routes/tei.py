"""text-embeddings-inference's API: ``/embed``, ``/embed_all``, ``/embed_sparse``,
``/similarity``, ``/predict``, TEI's ``/rerank``, ``/info`` and ``POST /`` (routed by
the model's task, as TEI does), so TEI's clients work unchanged.

Every failure on these routes answers in TEI's shape, ``{"error", "error_type"}``,
with TEI's statuses (see :func:`tei_error`). ``POST /rerank`` serves TEI's body and
the vLLM/Cohere one: :class:`RerankByBody` tells them apart by their keys.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from fastapi import APIRouter, Body, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from cenote.config.pooler import PoolingType
from cenote.engine.async_engine import BatchFailedError, EngineStoppedError, QueueFullError
from cenote.engine.engine import UnsupportedTaskError
from cenote.params import PoolingParams
from cenote.server.context import ModelContext, ServerContext, get_context
from cenote.server.errors import APIError, client_message, validation_message
from cenote.server.payloads import json_response, sparse_payload
from cenote.server.protocol_tei import (
    TEI_ERROR_STATUS,
    Prediction,
    Rank,
    TEIEmbedRequest,
    TEIErrorResponse,
    TEIInfo,
    TEIInputRequest,
    TEIPredictRequest,
    TEIRerankRequest,
    TEISimilarityRequest,
)
from cenote.server.routes import scoring
from cenote.version import __version__

logger = logging.getLogger(__name__)


class EmptyInputError(ValueError):
    """No inputs, or an empty text: TEI's ``Empty`` error (400)."""


class ModelTypeError(ValueError):
    """The model does not do what the route asks (TEI: 424, "model is not a ...")."""


def tei_error(exc: Exception) -> Response:
    """``exc`` as TEI answers it. Bad bodies, too-long inputs, unknown prompts and too
    many inputs are ``Validation`` (422); no inputs ``Empty`` (400); a model that does
    not serve the route, or a batch that failed, ``Backend`` (424); a full queue
    ``Overloaded`` (429); a stopped engine ``Unhealthy`` (503)."""
    headers = None
    message = str(exc)
    if isinstance(exc, (RequestValidationError, ValidationError)):
        if isinstance(exc, ValidationError):
            exc = RequestValidationError(exc.errors(include_url=False))
        kind, message = "Validation", validation_message(exc)
    elif isinstance(exc, EmptyInputError):
        kind = "Empty"
    elif isinstance(exc, (ModelTypeError, UnsupportedTaskError, BatchFailedError)):
        kind = "Backend"
    elif isinstance(exc, (ValueError, TypeError)):
        kind = "Validation"
    elif isinstance(exc, QueueFullError):
        kind, headers = "Overloaded", {"Retry-After": str(exc.retry_after_s)}
    elif isinstance(exc, EngineStoppedError):
        kind = "Unhealthy"
        retry_after = getattr(exc, "retry_after_s", None)
        headers = {"Retry-After": str(retry_after)} if retry_after else None
    elif isinstance(exc, APIError):  # an unknown `model`
        kind = {429: "Overloaded", 503: "Unhealthy"}.get(exc.status, "Validation")
        body = TEIErrorResponse(error=client_message(exc.message), error_type=kind)
        return Response(body.model_dump_json(), status_code=exc.status, headers=exc.headers,
                        media_type="application/json")
    else:
        logger.error("Unhandled error on a TEI route", exc_info=exc)
        body = TEIErrorResponse(error="Internal server error.", error_type="Backend")
        return Response(body.model_dump_json(), status_code=500, media_type="application/json")
    body = TEIErrorResponse(error=client_message(message), error_type=kind)
    return Response(body.model_dump_json(), status_code=TEI_ERROR_STATUS[kind],
                    headers=headers, media_type="application/json")


class TEIRoute(APIRoute):
    """A route whose failures, the body's validation included, answer in TEI's shape."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def answer_in_teis_shape(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:  # every failure, in TEI's shape
                return tei_error(exc)

        return answer_in_teis_shape


router = APIRouter(route_class=TEIRoute)


def _prompts(body: TEIInputRequest) -> list:
    prompts = body.prompts()
    if not prompts or any(p == "" for p in prompts):
        raise EmptyInputError("`inputs` cannot be empty")
    return prompts


def _serves(m: ModelContext, task: str, what: str) -> None:
    if task not in m.engine.config.supported_pooling_tasks:
        raise ModelTypeError(f"model is not {what}")


async def _encode(ctx: ServerContext, body: TEIInputRequest, task: str, what: str,
                  params: PoolingParams | None = None, served_task: str | None = None) -> list:
    """A TEI input request's outputs for ``task``: its inputs checked (counted, and the
    model serving ``served_task``, by default ``task``, else TEI's error naming
    ``what`` it must be), then run with its truncation."""
    m = ctx.model(body.model)
    prompts = _prompts(body)
    ctx.check_num_inputs(len(prompts), "inputs")
    _serves(m, served_task or task, what)
    params = params or PoolingParams(truncation_side=body.truncation_side)
    return await m.engine.encode(prompts, task, params, body.truncate_prompt_tokens(),
                                 prompt_name=body.prompt_name)


@router.post("/embed")
async def embed(body: TEIEmbedRequest, ctx: ServerContext = Depends(get_context)) -> Response:
    """One vector per input, normalised unless ``normalize`` is false."""
    params = PoolingParams(dimensions=body.dimensions, normalize=body.normalize,
                           truncation_side=body.truncation_side)
    outputs = await _encode(ctx, body, "embed", "an embedding model", params)
    return json_response([o.outputs.data.tolist() for o in outputs])


@router.post("/embed_all")
async def embed_all(body: TEIInputRequest,
                    ctx: ServerContext = Depends(get_context)) -> Response:
    """Every token's hidden state, per input, before pooling."""
    outputs = await _encode(ctx, body, "encode", "an embedding model", served_task="embed")
    return json_response([o.outputs.data.tolist() for o in outputs])


@router.post("/embed_sparse")
async def embed_sparse(body: TEIInputRequest,
                       ctx: ServerContext = Depends(get_context)) -> Response:
    """SPLADE's and BGE-M3's sparse vectors: per input, the non-zero
    ``{"index", "value"}`` entries over the vocabulary."""
    outputs = await _encode(ctx, body, "embed_sparse",
                            "a sparse embedding model (SPLADE, BGE-M3)")
    vectors = []
    for output in outputs:
        payload = sparse_payload(output.outputs.data)
        vectors.append([{"index": i, "value": v}
                        for i, v in zip(payload["indices"], payload["values"], strict=True)])
    return json_response(vectors)


@router.post("/similarity")
async def similarity(body: TEISimilarityRequest,
                     ctx: ServerContext = Depends(get_context)) -> Response:
    """The cosine similarity of ``source_sentence`` with each of ``sentences``."""
    m = ctx.model(body.model)
    texts = [body.inputs.source_sentence, *body.inputs.sentences]
    if not body.inputs.sentences or "" in texts:
        raise EmptyInputError("`inputs.sentences` cannot be empty")
    ctx.check_num_inputs(len(texts), "inputs")
    _serves(m, "embed", "an embedding model")
    parameters = body.parameters
    params = PoolingParams(normalize=True, truncation_side=parameters.truncation_side)
    outputs = await m.engine.encode(texts, "embed", params, parameters.truncate_prompt_tokens(),
                                    prompt_name=parameters.prompt_name)
    source, *others = (o.outputs.data.numpy() for o in outputs)
    return json_response([float(np.dot(source, other)) for other in others])


@router.post("/predict")
async def predict(body: TEIPredictRequest,
                  ctx: ServerContext = Depends(get_context)) -> Response:
    """Each label's score, highest first: per input for a batch, else one list. A text
    pair needs a cross-encoder (one label)."""
    m = ctx.model(body.model)
    if not body.inputs:
        raise EmptyInputError("`inputs` cannot be empty")
    sequences = body.sequences()
    ctx.check_num_inputs(len(sequences), "inputs")
    _serves(m, "classify", "a classifier")
    params = PoolingParams(use_activation=False if body.raw_scores else None,
                           truncation_side=body.truncation_side)
    cut = body.truncate_prompt_tokens()
    texts = [i for i, s in enumerate(sequences) if len(s) == 1]
    pairs = [i for i, s in enumerate(sequences) if len(s) == 2]
    id2label = m.engine.config.id2label
    predictions: list[list[dict] | None] = [None] * len(sequences)
    if texts:
        outputs = await m.engine.encode([sequences[i][0] for i in texts], "classify", params, cut)
        for i, output in zip(texts, outputs, strict=True):
            predictions[i] = _ranked(output.outputs.data.tolist(), id2label)
    if pairs:
        outputs = await m.engine.score([sequences[i] for i in pairs], params, cut,
                                       operation="classification")
        for i, output in zip(pairs, outputs, strict=True):
            predictions[i] = _ranked([output.outputs.score], id2label)
    return json_response(predictions if body.is_batch else predictions[0])


def _ranked(scores: list[float], id2label: dict[int, str]) -> list[dict]:
    ranked = sorted(range(len(scores)), key=scores.__getitem__, reverse=True)
    return [Prediction(score=scores[k], label=id2label.get(k, f"LABEL_{k}")).model_dump()
            for k in ranked]


async def tei_rerank(body: TEIRerankRequest,
                     ctx: ServerContext = Depends(get_context)) -> Response:
    """TEI's ``/rerank``: ``[{"index", "score", "text"?}]``, highest score first. An
    embedding model ranks by cosine, as on the vLLM route (TEI refuses one)."""
    m = ctx.model(body.model)
    if not body.texts:
        raise EmptyInputError("`texts` cannot be empty")
    ctx.check_num_inputs(len(body.texts), "texts")
    params = PoolingParams(use_activation=False if body.raw_scores else None,
                           truncation_side=body.truncation_side)
    outputs = await m.engine.score([(body.query, text) for text in body.texts], params,
                                   body.truncate_prompt_tokens())
    ranks = sorted((Rank(index=i, score=o.outputs.score,
                         text=body.texts[i] if body.return_text else None)
                    for i, o in enumerate(outputs)), key=lambda r: r.score, reverse=True)
    return json_response([rank.model_dump() for rank in ranks])


@router.get("/info", response_model=TEIInfo)
async def info(model: str | None = None, ctx: ServerContext = Depends(get_context)) -> Response:
    """The served model and this server's limits, in TEI's fields."""
    m = ctx.model(model)
    config = m.engine.config
    return json_response(TEIInfo(
        model_id=ctx.served_as(m.name).names[0], served_model_name=m.name,
        model_dtype=str(config.dtype).removeprefix("torch."), model_type=_model_type(m),
        max_input_length=config.max_model_len, max_batch_tokens=config.max_num_batched_tokens,
        max_client_batch_size=ctx.limits.max_inputs_per_request,
        auto_truncate=config.auto_truncate, version=__version__))


# TEI's names of the pooling methods.
_TEI_POOLING = {PoolingType.CLS: "cls", PoolingType.MEAN: "mean", PoolingType.LAST: "last_token"}


def _model_type(m: ModelContext) -> dict[str, dict[str, Any]]:
    """TEI's model type: a classifier with one label is a reranker."""
    config = m.engine.config
    if config.task == "classify":
        labels = config.id2label or {k: f"LABEL_{k}" for k in range(config.num_labels)}
        kind = "reranker" if config.num_labels == 1 else "classifier"
        return {kind: {"id2label": {str(k): v for k, v in labels.items()},
                       "label2id": {v: k for k, v in labels.items()}}}
    if config.task == "embed":
        if "embed" not in config.supported_pooling_tasks:
            return {"embedding": {"pooling": "splade"}}
        method = config.task_pooler("embed").pooling_type
        return {"embedding": {"pooling": _TEI_POOLING.get(method, method.value.lower())}}
    return {config.task: {}}  # a reward model: no TEI type


@router.post("/")
async def root(body: dict[str, Any] = Body(...),
               ctx: ServerContext = Depends(get_context)) -> Response:
    """TEI's default route, by the model's type: ``/predict`` for a classifier,
    ``/rerank`` for a reranker, ``/embed_sparse`` for a sparse-only model, else
    ``/embed``; or ``/similarity`` when ``inputs`` is a ``{"source_sentence",
    "sentences"}`` object (TEI needs ``TASK=sentence-similarity`` for that)."""
    m = ctx.model(body.get("model") if isinstance(body.get("model"), str) else None)
    model_type = _model_type(m)
    kind = next(iter(model_type))
    if kind == "classifier":
        return await predict(TEIPredictRequest.model_validate(body), ctx)
    if kind == "reranker":
        return await tei_rerank(TEIRerankRequest.model_validate(body), ctx)
    if kind == "embedding":
        if isinstance(body.get("inputs"), dict):
            return await similarity(TEISimilarityRequest.model_validate(body), ctx)
        if model_type["embedding"]["pooling"] == "splade":
            return await embed_sparse(TEIInputRequest.model_validate(body), ctx)
        return await embed(TEIEmbedRequest.model_validate(body), ctx)
    raise ModelTypeError(f"a {kind} model has no TEI route")


class RerankByBody:
    """``POST /rerank`` for two APIs: TEI's body (``texts`` and no ``documents``) goes to
    TEI's rerank, any other to the vLLM/Cohere one, each with its own validation, answer
    and error shape. An ASGI app: it reads the body once and hands it on."""

    def __init__(self, tei: APIRoute, other: APIRoute) -> None:
        self.tei = tei
        self.other = other

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        route = self.tei if _is_tei_rerank(body) else self.other
        # The route's scope keys into the request's own scope: the metrics middleware
        # reads the matched route from it, even for a request cancelled mid-way.
        _, child_scope = route.matches(scope)
        scope.update(child_scope)
        await route.handle(scope, replay, send)


def _is_tei_rerank(body: bytes) -> bool:
    if b'"texts"' not in body:  # most bodies: no second parse
        return False
    try:
        data = json.loads(body)
    except ValueError:
        return False
    return isinstance(data, dict) and "texts" in data and "documents" not in data


# Registered before the scoring routes, so it answers POST /rerank for both APIs; the
# vLLM/Cohere route stays in the OpenAPI schema.
router.routes.append(Route("/rerank", RerankByBody(
    TEIRoute("/rerank", tei_rerank, methods=["POST"]),
    next(r for r in scoring.router.routes if getattr(r, "path", None) == "/rerank")),
    methods=["POST"], include_in_schema=False))
