"""``/v2/embed`` and ``/v1/embed``: Cohere's embed API, so Cohere's clients work
unchanged: the model's instruction picked by ``input_type``, several
``embedding_types`` (float, int8/uint8 codes, packed sign bits, base64) from one pass."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from fastapi import APIRouter, Depends
from fastapi.responses import Response

from cenote.inputs.instructions import prompt_name_for_input_type
from cenote.params import PoolingParams
from cenote.pooling.compact import check_embedding_types, compact
from cenote.server.context import ModelContext, ServerContext, get_context
from cenote.server.payloads import render
from cenote.server.protocol_chat import ImagePart, ImageURL
from cenote.server.protocol_cohere import (
    CohereApiVersion,
    CohereBilledUnits,
    CohereEmbeddings,
    CohereEmbedFloatsResponse,
    CohereEmbedRequest,
    CohereEmbedResponse,
    CohereMeta,
)

router = APIRouter()

# Cohere's truncate -> the side cenote cuts from (NONE: no cut; too long is a 400).
_TRUNCATION_SIDES = {"START": "left", "END": "right"}


async def _inputs(m: ModelContext, body: CohereEmbedRequest) -> list:
    """The texts, or for a model that takes images, the images (data URIs and the
    sources the server allows), as engine prompts."""
    images = body.images or []
    if body.images is None and any(part.type == "image_url" for item in body.inputs or ()
                                   for part in item.content):
        images = None  # inputs with image parts: one prompt per item, parts as given
    if images is None or images:
        if "image" not in m.engine.config.modalities:
            raise ValueError("This model takes text only; images need a multi-modal model.")
        if images:  # each image one input, as one image part
            return [await m.prompt_from_parts([ImagePart(type="image_url",
                                                         image_url=ImageURL(url=uri))])
                    for uri in images]
        return [await m.prompt_from_parts([part.chat_part() for part in item.content])
                for item in body.inputs]
    return _texts(body)


def _texts(body: CohereEmbedRequest) -> list[str]:
    if body.texts is not None:
        return list(body.texts)
    texts = []
    for i, item in enumerate(body.inputs):
        parts = [part.text for part in item.content if part.text]
        if not parts:
            raise ValueError(f"inputs[{i}] has no text.")
        texts.append("\n".join(parts))
    return texts


async def _embed(ctx: ServerContext, body: CohereEmbedRequest
                 ) -> tuple[list, list, Callable[[], CohereEmbeddings]]:
    """One pass over the inputs: the outputs, the inputs, and how to write them as
    ``CohereEmbeddings`` (one list per requested type)."""
    m = ctx.model(body.model)
    count = len(body.texts or body.images or body.inputs or ())
    ctx.check_num_inputs(count, "inputs")  # before any image is fetched
    prompt_name = prompt_name_for_input_type(m.engine.config.st_config, body.input_type)
    texts = await _inputs(m, body)
    types = list(dict.fromkeys(body.embedding_types or ["float"]))
    check_embedding_types(types)
    side = _TRUNCATION_SIDES.get(body.truncate)
    if body.max_tokens is not None and body.max_tokens < 1:
        raise ValueError("max_tokens must be positive.")
    limit = m.engine.config.max_model_len
    keep = min(body.max_tokens or limit, limit) if side is not None else None
    params = PoolingParams(dimensions=body.output_dimension, truncation_side=side)
    outputs = await m.engine.encode(texts, "embed", params, keep, prompt_name=prompt_name)
    if side is None and body.max_tokens is not None:
        _check_max_tokens(outputs, body.max_tokens)
    ranges = (await m.engine.int8_ranges(params)
              if {"int8", "uint8"} & set(types) else None)

    def by_type() -> CohereEmbeddings:
        vectors = np.stack([o.outputs.data.numpy() for o in outputs]).astype(np.float32)
        embeddings = {}
        for kind in types:
            values = compact(vectors, kind, ranges)
            embeddings[kind] = values if isinstance(values, list) else values.tolist()
        return CohereEmbeddings.model_validate(embeddings)

    return outputs, texts, by_type


def _check_max_tokens(outputs: list, max_tokens: int) -> None:
    """truncate NONE with max_tokens: an input over it is refused, not cut (as vLLM)."""
    for out in outputs:
        n = len(out.prompt_token_ids)
        if n > max_tokens:
            raise ValueError(f"Input of {n} tokens exceeds max_tokens={max_tokens} with "
                             "truncate=NONE. Set truncate to END or START to allow "
                             "truncation.")


def _meta(outputs: list, body: CohereEmbedRequest, version: str) -> CohereMeta:
    """The tokens read, billed as vLLM bills them: all as image tokens when the request
    has an image, else all as input tokens."""
    tokens = sum(o.num_input_tokens for o in outputs)
    images = body.images is not None or any(part.type == "image_url"
                                            for item in body.inputs or () for part in item.content)
    return CohereMeta(api_version=CohereApiVersion(version=version),
                      billed_units=CohereBilledUnits(input_tokens=0 if images else tokens,
                                                     image_tokens=tokens if images else 0))


@router.post("/v2/embed", response_model=CohereEmbedResponse)
async def cohere_embed(body: CohereEmbedRequest,
                       ctx: ServerContext = Depends(get_context)) -> Response:
    """Embeddings in Cohere's shape: one list per requested embedding type."""
    outputs, texts, by_type = await _embed(ctx, body)

    def build() -> CohereEmbedResponse:
        embeddings = by_type()
        return CohereEmbedResponse(id=body.response_id("embed"), embeddings=embeddings,
                                   texts=[t for t in texts if isinstance(t, str)],
                                   meta=_meta(outputs, body, "2"))

    return await render(build, len(outputs))


@router.post("/v1/embed", response_model=CohereEmbedFloatsResponse | CohereEmbedResponse)
async def cohere_embed_v1(body: CohereEmbedRequest,
                          ctx: ServerContext = Depends(get_context)) -> Response:
    """Cohere's v1 embed (``cohere.Client``, langchain-cohere): without
    ``embedding_types``, the float vectors as a plain list (``embeddings_floats``);
    with them, one list per type (``embeddings_by_type``), as v2."""
    outputs, texts, by_type = await _embed(ctx, body)

    def build() -> CohereEmbedFloatsResponse | CohereEmbedResponse:
        embeddings = by_type()
        kind = CohereEmbedResponse if body.embedding_types else CohereEmbedFloatsResponse
        return kind(id=body.response_id("embed"),
                    embeddings=embeddings if body.embedding_types else embeddings.float_,
                    texts=[t for t in texts if isinstance(t, str)], meta=_meta(outputs, body, "1"))

    return await render(build, len(outputs))
