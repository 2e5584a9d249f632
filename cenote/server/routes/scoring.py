"""``/score`` and ``/rerank``: relevance of text pairs (``LLM.score``).

Cross-encoders score each pair jointly; embedding models fall back to the
cosine similarity of the two embeddings.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from cenote.inputs.prompts import make_score_pairs
from cenote.server.context import ModelContext, ServerContext, get_context
from cenote.server.payloads import render
from cenote.server.protocol import (
    RerankDocument,
    RerankRequest,
    RerankResponse,
    RerankResult,
    RerankUsage,
    ScoreRequest,
    ScoreResponse,
    ScoreResponseData,
    UsageInfo,
)
from cenote.server.protocol_chat import ContentDocument

router = APIRouter()


@router.post("/score", response_model=ScoreResponse)
@router.post("/v1/score", response_model=ScoreResponse)
async def create_score(body: ScoreRequest, ctx: ServerContext = Depends(get_context)) -> Response:
    """Scores of ``text_1`` x ``text_2`` pairs: 1:1, 1:N or N:N."""
    m = ctx.model(body.model)
    m.require_scoring()
    # Counted before any image is fetched: 1:N and N:N make as many pairs as the longer side.
    ctx.check_num_inputs(max(_count(body.text_1), _count(body.text_2)), "text_1 x text_2")
    pairs = make_score_pairs(body.text_1, await _documents(m, body.text_2))
    outputs = await m.engine.score(pairs, body.pooling_params(), body.truncate_prompt_tokens,
                                   options=body.score_options(ctx.chat_template))

    def build() -> ScoreResponse:
        return ScoreResponse(
            id=body.response_id("score"), model=m.name,
            data=[ScoreResponseData(index=i, score=o.outputs.score)
                  for i, o in enumerate(outputs)],
            usage=UsageInfo.of_outputs(outputs),
        )

    return await render(build, len(outputs))


@router.post("/rerank", response_model=RerankResponse)
@router.post("/v1/rerank", response_model=RerankResponse)
@router.post("/v2/rerank", response_model=RerankResponse)
async def create_rerank(body: RerankRequest,
                        ctx: ServerContext = Depends(get_context)) -> Response:
    """Jina/Cohere rerank: documents ordered by relevance to the query."""
    m = ctx.model(body.model)
    m.require_scoring()
    if not body.documents:
        raise ValueError("documents must not be empty.")
    ctx.check_num_inputs(len(body.documents), "documents")
    pairs = make_score_pairs(body.query, await _documents(m, body.documents),
                             names=("query", "documents"))
    outputs = await m.engine.score(pairs, body.pooling_params(), body.truncate_prompt_tokens,
                                     operation="embedding generation",  # vLLM's wording
                                     options=body.score_options(ctx.chat_template))

    tokens = sum(o.num_input_tokens for o in outputs)

    def build() -> RerankResponse:
        results = sorted(
            (RerankResult(index=i, relevance_score=o.outputs.score,
                          document=_as_sent(body.documents[i]) if body.return_documents else None)
             for i, o in enumerate(outputs)),
            key=lambda r: r.relevance_score, reverse=True)
        if body.top_n > 0:  # 0 or less: all of them, as vLLM
            results = results[:body.top_n]
        return RerankResponse(
            id=body.response_id("rerank"), model=m.name, results=results,
            usage=RerankUsage(prompt_tokens=tokens, total_tokens=tokens))

    return await render(build, len(outputs))


def _count(side) -> int:
    return len(side) if isinstance(side, list) else 1


async def _documents(m: ModelContext, documents):
    """Documents as engine inputs: texts as they are, content parts as one input each."""
    if isinstance(documents, ContentDocument):
        return await m.prompt_from_parts(documents.content)
    if not isinstance(documents, list):
        return documents
    return [await m.prompt_from_parts(d.content) if isinstance(d, ContentDocument) else d
            for d in documents]


def _as_sent(document: str | ContentDocument) -> RerankDocument:
    if isinstance(document, ContentDocument):
        return RerankDocument(content=[part.model_dump() for part in document.content])
    return RerankDocument(text=document)
