"""BGE-M3's dense and sparse vectors from one request, the way vLLM's example plugin
``bge_m3_sparse_plugin`` answers: ``{"task": "plugin", "data": {"input": ...,
"embed_task": "dense&sparse", "return_tokens": true}}`` on ``/pooling`` gives, per input,
its dense embedding and its lexical weights as ``{token_id, weight, token}``.

Registered as the entry point ``bge_m3_sparse_plugin``:
``cenote serve BAAI/bge-m3 --io-processor-plugin bge_m3_sparse_plugin``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, StrictBool, StrictStr

from cenote.engine.io_processor import IOProcessor
from cenote.outputs import PoolingRequestOutput
from cenote.params import PoolingParams


class SparseEmbeddingRequest(BaseModel):
    """The plugin's ``data``."""

    model_config = ConfigDict(extra="forbid")

    input: StrictStr | list[StrictStr]
    embed_task: Literal["sparse", "dense", "dense&sparse"] = "dense&sparse"
    return_tokens: StrictBool | None = None


class SparseEmbeddingTokenWeight(BaseModel):
    token_id: int
    weight: float
    token: str | None


class SparseEmbeddingResponseData(BaseModel):
    index: int
    object: str
    sparse_embedding: list[SparseEmbeddingTokenWeight] | None
    dense_embedding: list[float] | None


class SparseEmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class SparseEmbeddingResponse(BaseModel):
    data: list[SparseEmbeddingResponseData]
    usage: SparseEmbeddingUsage


class BgeM3SparseEmbeddingsProcessor(IOProcessor[SparseEmbeddingRequest,
                                                 SparseEmbeddingResponse]):
    """Dense (``embed``) and lexical weights (``embed_sparse``) of each input."""

    pooling_tasks = ("embed", "embed_sparse")

    def __init__(self, model_config: Any, tokenizer: Any) -> None:
        super().__init__(model_config, tokenizer)
        missing = {"embed", "embed_sparse"} - set(model_config.supported_pooling_tasks)
        if missing:
            raise ValueError(f"bge_m3_sparse_plugin needs a model with dense and sparse "
                             f"outputs (BGE-M3); this one has no {', '.join(sorted(missing))}.")
        self._requests: dict[str | None, SparseEmbeddingRequest] = {}

    def parse_data(self, data: object) -> SparseEmbeddingRequest:
        if not isinstance(data, dict):
            raise TypeError("data should be a dictionary")
        return SparseEmbeddingRequest.model_validate(data)

    def merge_pooling_params(self, params: PoolingParams | None = None) -> PoolingParams:
        return params or PoolingParams()

    def pre_process(self, prompt: SparseEmbeddingRequest, request_id: str | None = None,
                    **kwargs: Any) -> list[str]:
        self._requests[request_id] = prompt
        return [prompt.input] if isinstance(prompt.input, str) else list(prompt.input)

    def post_process(self, model_output: Mapping[str, Sequence[PoolingRequestOutput]],
                     request_id: str | None = None, **kwargs: Any) -> SparseEmbeddingResponse:
        request = self._requests.pop(request_id)
        dense = request.embed_task in ("dense", "dense&sparse")
        sparse = request.embed_task in ("sparse", "dense&sparse")
        data, tokens = [], 0
        for index, (vector, weights) in enumerate(zip(model_output["embed"],
                                                      model_output["embed_sparse"],
                                                      strict=True)):
            tokens += vector.num_input_tokens
            data.append(SparseEmbeddingResponseData(
                index=index, object=request.embed_task,
                dense_embedding=vector.outputs.data.tolist() if dense else None,
                sparse_embedding=self._weights(weights, request.return_tokens)
                if sparse else None))
        return SparseEmbeddingResponse(
            data=data, usage=SparseEmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens))

    def _readable(self, token_id: int) -> str:
        """A token as text (``" France"``), its word-start marker read back as a space."""
        text = self.tokenizer.decode([token_id])
        piece = self.tokenizer.convert_ids_to_tokens(token_id) or ""
        starts_word = piece[:1] in ("\u2581", "\u0120")  # SentencePiece's and GPT-2's
        return " " + text if starts_word and not text.startswith(" ") else text

    def _weights(self, output: PoolingRequestOutput, return_tokens: bool | None
                 ) -> list[SparseEmbeddingTokenWeight]:
        vector = output.outputs.data.coalesce()
        ids = vector.indices()[0].tolist()
        names = [self._readable(i) for i in ids] if return_tokens else [None] * len(ids)
        return [SparseEmbeddingTokenWeight(token_id=i, weight=w, token=t)
                for i, w, t in zip(ids, vector.values().tolist(), names, strict=True)]
