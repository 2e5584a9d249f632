"""``/v1/embeddings``, ``/pooling`` and ``/classify``: one output per input."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from cenote.engine.io_processor import NO_IO_PROCESSOR_PLUGIN, plugin_prompts
from cenote.exceptions import VLLMValidationError
from cenote.inputs.prompts import Prompt
from cenote.outputs import PoolingRequestOutput
from cenote.params import LateChunkingParams
from cenote.server.context import ModelContext, ServerContext, get_context
from cenote.server.payloads import (
    BYTES_FORMATS,
    bytes_response,
    float_payload,
    prompts_from_input,
    render,
    sparse_payload,
)
from cenote.server.protocol import (
    ClassificationData,
    ClassificationRequest,
    ClassificationResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingResponseData,
    IOProcessorResponse,
    PoolingRequest,
    PoolingResponse,
    PoolingResponseData,
    SparseVector,
    TokenEmbeddingResponse,
    TokenEmbeddingResponseData,
    UsageInfo,
)
from cenote.server.protocol_base import now

router = APIRouter()


async def _prompts(m: ModelContext,
                   body: EmbeddingRequest | ClassificationRequest) -> list[Prompt]:
    if body.messages is not None:
        return [await m.prompt_from_messages(body)]
    prompts = prompts_from_input(body.input)
    m.server.check_num_inputs(len(prompts))
    return prompts


def _bytes(m: ModelContext, body: EmbeddingRequest, outputs: list[PoolingRequestOutput],
           response_id: str) -> Response:
    """The outputs as ``bytes`` or ``bytes_only`` (vLLM's binary answers)."""
    usage = UsageInfo.of_outputs(outputs)
    metadata = None if body.encoding_format == "bytes_only" else {
        "id": response_id, "created": now(), "model": m.name,
        "usage": {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.total_tokens}}
    return bytes_response([o.outputs.data for o in outputs], body.embed_dtype, body.endianness,
                          metadata)


@router.post("/v1/embeddings", response_model=EmbeddingResponse)
async def create_embeddings(body: EmbeddingRequest,
                            ctx: ServerContext = Depends(get_context)) -> Response:
    """OpenAI embeddings: one vector per input (``LLM.embed``); with ``embedding_type``
    sparse, the model's sparse vector (``LLM.embed_sparse``) as indices and values."""
    m = ctx.model(body.model)
    if m.engine.config.default_pooling_task == "token_embed":
        return await _token_embeddings(m, body)
    if body.late_chunking_params is not None:
        raise VLLMValidationError("late_chunking_params on /v1/embeddings needs a server whose "
                                  "pooler task is token_embed (--pooler-config.task "
                                  "token_embed); or send it to /pooling with task token_embed.",
                                  parameter="late_chunking_params")
    sparse = body.embedding_type == "sparse"
    if sparse and body.encoding_format in BYTES_FORMATS:
        raise VLLMValidationError("encoding_format bytes and bytes_only send dense tensors; "
                                  "a sparse embedding is sent as float.",
                                  parameter="encoding_format")
    outputs = await m.engine.encode(await _prompts(m, body),
                                      "embed_sparse" if sparse else "embed", body.pooling_params(),
                                      body.truncate_prompt_tokens, m.special_tokens(body),
                                      prompt_name=body.prompt_name)

    def vector(data) -> list[float] | str | SparseVector:
        if sparse:
            return SparseVector(**sparse_payload(data))
        return float_payload(data, body.encoding_format, body.embed_dtype, body.endianness)

    response_id = body.response_id("embd")

    def build() -> EmbeddingResponse | Response:
        if body.encoding_format in BYTES_FORMATS:
            return _bytes(m, body, outputs, response_id)
        return EmbeddingResponse(
            id=response_id, model=m.name,
            data=[EmbeddingResponseData(index=i, embedding=vector(o.outputs.data))
                  for i, o in enumerate(outputs)],
            usage=UsageInfo.of_outputs(outputs),
        )

    return await render(build, len(outputs))


async def _token_embeddings(m: ModelContext, body: EmbeddingRequest) -> Response:
    """``/v1/embeddings`` where the pooler task is token_embed (vLLM's
    ``TokenEmbeddingResponse``): per input its token vectors, or with
    ``late_chunking_params`` one vector per chunk and the chunks' ranges."""
    if body.encoding_format != "float":
        raise VLLMValidationError("A token_embed server answers /v1/embeddings in float only "
                                  "(vLLM's TokenEmbeddingRequest).", parameter="encoding_format")
    if body.dimensions is not None or body.embedding_type != "dense":
        field = "dimensions" if body.dimensions is not None else "embedding_type"
        raise VLLMValidationError(f"{field} is not supported by a token_embed server's "
                                  "/v1/embeddings.", parameter=field)
    chunking = body.late_chunking_params
    params = body.pooling_params()
    if chunking is not None:
        params.late_chunking_params = LateChunkingParams(chunking.chunk_size)
    outputs = await m.engine.encode(await _prompts(m, body), "token_embed", params,
                                    body.truncate_prompt_tokens, m.special_tokens(body),
                                    prompt_name=body.prompt_name)

    def build() -> TokenEmbeddingResponse:
        return TokenEmbeddingResponse(
            id=body.response_id("embd"), model=m.name,
            data=[TokenEmbeddingResponseData(index=i, embedding=o.outputs.data.tolist(),
                                             late_chunking=o.late_chunking)
                  for i, o in enumerate(outputs)],
            usage=UsageInfo.of_outputs(outputs))

    return await render(build, sum(len(o.outputs.data) for o in outputs))


def _check_task(m: ModelContext, task: str) -> None:
    """vLLM's /pooling task checks, in its words. cenote serves every task the model has
    an output for (vLLM only the one its pooler config names), so vLLM's "Try switching
    the model's pooling_task" never applies here."""
    if task == "plugin":
        if m.io_processor is None:
            raise VLLMValidationError(NO_IO_PROCESSOR_PLUGIN, parameter="task")
        return
    served = m.engine.config.supported_pooling_tasks
    if task not in served:
        raise VLLMValidationError(f"Unsupported task: {task!r} Supported tasks: {served}",
                                  parameter="task")


@router.post("/pooling", response_model=PoolingResponse)
async def create_pooling(body: PoolingRequest,
                         ctx: ServerContext = Depends(get_context)) -> Response:
    """Pooler output per input for ``task`` (``LLM.encode``): without one, the model's
    default (``--pooler-config.task``), else all token rows (encode)."""
    m = ctx.model(body.model)
    task = body.task
    if "task" not in body.model_fields_set:
        task = m.engine.config.default_pooling_task or task
    _check_task(m, task)
    if task == "plugin":
        return await _run_plugin(m, body)
    if body.late_chunking_params is not None and body.encoding_format in BYTES_FORMATS:
        raise VLLMValidationError("late_chunking_params answers in JSON (encoding_format float "
                                  "or base64): each vector's chunk ranges go beside it.",
                                  parameter="encoding_format")
    outputs = await m.engine.encode(await _prompts(m, body), task, body.pooling_params(),
                                      body.truncate_prompt_tokens, m.special_tokens(body),
                                      prompt_name=body.prompt_name)
    response_id = body.response_id("pool")

    def build() -> PoolingResponse | Response:
        if body.encoding_format in BYTES_FORMATS:
            return _bytes(m, body, outputs, response_id)
        return PoolingResponse(
            id=response_id, model=m.name,
            data=[PoolingResponseData(index=i, data=float_payload(
                o.outputs.data, body.encoding_format, body.embed_dtype, body.endianness),
                late_chunking=o.late_chunking) for i, o in enumerate(outputs)],
            usage=UsageInfo.of_outputs(outputs),
        )

    # Token-level outputs are big even for few inputs; count rows, not inputs.
    return await render(build, sum(len(o.outputs.data) if o.outputs.data.ndim > 1 else 1
                                   for o in outputs))


async def _run_plugin(m: ModelContext, body: PoolingRequest) -> Response:
    """``task: "plugin"``: the IO processor plugin reads ``data``, its prompts run for
    each of its pooling tasks, and its answer is the response's ``data`` (vLLM's
    ``IOProcessorResponse``)."""
    processor = m.io_processor
    if body.data is None:
        raise VLLMValidationError("task 'plugin' takes its request in data.", parameter="data")
    request_id = body.response_id("pool")
    prompts, params = plugin_prompts(processor, body.data, request_id)
    outputs = {task: await m.engine.encode(prompts, task, params) for task in
               processor.pooling_tasks}
    answer = processor.post_process(outputs, request_id=request_id)
    return await render(lambda: IOProcessorResponse(request_id=request_id, data=answer),
                        len(prompts))


@router.post("/classify", response_model=ClassificationResponse)
async def create_classification(body: ClassificationRequest,
                                ctx: ServerContext = Depends(get_context)) -> Response:
    """Class probabilities and the most likely label per input (``LLM.classify``)."""
    m = ctx.model(body.model)
    outputs = await m.engine.encode(await _prompts(m, body), "classify", body.pooling_params(),
                                      body.truncate_prompt_tokens, m.special_tokens(body))
    id2label = m.engine.config.id2label

    def build() -> ClassificationResponse:
        data = []
        for i, o in enumerate(outputs):
            probs = o.outputs.data.tolist()
            best = max(range(len(probs)), key=probs.__getitem__)
            data.append(ClassificationData(index=i, label=id2label.get(best, str(best)),
                                           probs=probs, num_classes=len(probs)))
        return ClassificationResponse(
            id=body.response_id("classify"), model=m.name, data=data,
            usage=UsageInfo.of_outputs(outputs))

    return await render(build, len(outputs))
