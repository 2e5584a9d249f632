"""Request and response bodies of the HTTP API (OpenAI, vLLM and Jina/Cohere names).

Field names and defaults follow vLLM's OpenAI-compatible server so that its
clients work unchanged. Types are strict: ``"1"`` is not a token id and
``true`` is not a dimension.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    model_serializer,
    model_validator,
)

from cenote.outputs import LateChunkingMetadata
from cenote.params import LateChunkingParams, PoolingParams
from cenote.server.protocol_base import APIModel, Items, PoolingRequestFields, now, random_id
from cenote.server.protocol_chat import ChatFields, ContentDocument
from cenote.server.protocol_scoring import ScoringFields

# A text, texts, one token-id prompt or several: the OpenAI ``input`` union.
PromptInput = StrictStr | Items[StrictStr] | Items[StrictInt] | Items[Items[StrictInt]]


# ---- requests ----------------------------------------------------------


class TruncationFields(PoolingRequestFields):
    """How long inputs are cut: to ``truncate_prompt_tokens`` (-1: the model's limit),
    from the ``truncation_side`` (``left`` keeps the last tokens, vLLM's default;
    ``right`` the first, as Sentence-Transformers and TEI); and whether they are padded
    (``padding`` ``max_length``: to the model's limit with its pad token, as vLLM)."""

    truncate_prompt_tokens: StrictInt | None = None
    truncation_side: Literal["left", "right"] | None = None
    padding: Literal["do_not_pad", "max_length"] | None = None


class InputOrMessages(ChatFields):
    """``input`` (OpenAI's) or ``messages``."""

    input: PromptInput | None = None

    @model_validator(mode="after")
    def _one_of(self):
        self._text_or_messages(self.input, "input")
        return self


class ActivationFields(TruncationFields):
    """Whether a classifier's head output goes through its activation (sigmoid or
    softmax); false returns raw logits. ``use_activation`` is vLLM's current name,
    ``activation`` and ``softmax`` its older ones; any of them may be sent."""

    use_activation: StrictBool | None = None
    activation: StrictBool | None = None
    softmax: StrictBool | None = None

    def pooling_params(self) -> PoolingParams:
        return PoolingParams(use_activation=self.use_activation, activation=self.activation,
                             softmax=self.softmax, truncation_side=self.truncation_side,
                             padding=self.padding)


class LateChunkingConfig(APIModel):
    """``late_chunking_params`` as vLLM reads it: only ``chunk_size``, a positive int."""

    model_config = ConfigDict(extra="forbid")

    chunk_size: int = Field(gt=0, le=2**63 - 1, strict=True)


class EmbeddingRequest(InputOrMessages, TruncationFields):
    """``/v1/embeddings``. ``encoding_format``: float (JSON numbers), base64 (of the
    values' bytes), or the bytes as the body: ``bytes`` with a ``metadata`` header that
    places each vector in it, ``bytes_only`` without. ``embed_dtype`` and ``endianness``
    say how base64 and bytes write each value. ``use_activation`` false (vLLM's name) or
    ``normalize`` false: the vectors as pooled, not normalised."""

    model: str | None = None
    encoding_format: Literal["float", "base64", "bytes", "bytes_only"] = "float"
    embed_dtype: Literal["float32", "float16", "bfloat16", "fp8_e4m3", "fp8_e5m2"] = "float32"
    endianness: Literal["native", "big", "little"] = "native"
    dimensions: StrictInt | None = None
    user: str | None = None
    normalize: StrictBool | None = None
    use_activation: StrictBool | None = None
    # The model's instruction to put before each text (TEI's field; Sentence-Transformers
    # prompts). Without it, the model's default prompt applies.
    prompt_name: StrictStr | None = None
    # "sparse": the model's sparse vector (SPLADE, BGE-M3) as indices and values.
    embedding_type: Literal["dense", "sparse"] = "dense"
    # Only where the server's pooler task is token_embed (vLLM's TokenEmbeddingRequest):
    # one vector per chunk_size tokens of the whole text's token vectors.
    late_chunking_params: LateChunkingConfig | None = None

    def pooling_params(self) -> PoolingParams:
        return PoolingParams(dimensions=self.dimensions, normalize=self.normalize,
                             use_activation=self.use_activation,
                             truncation_side=self.truncation_side, padding=self.padding)


class PoolingRequest(EmbeddingRequest, ActivationFields):
    """``/pooling``: the fields of embeddings; runs ``task`` (vLLM's: ``encode`` by
    default, or ``embed``, ``classify``, ``token_embed``, ``token_classify``; ``plugin``
    is vLLM's IO processor task). token_embed also takes ``late_chunking_params`` (one
    vector per chunk of tokens) and, for ColBERT models, ``embedding_mode``."""

    task: Literal["encode", "embed", "classify", "token_embed", "token_classify", "plugin",
                  "embed&token_classify"] = "encode"
    embedding_mode: Literal["query", "document"] | None = None
    # task "plugin": what the server's IO processor plugin reads, instead of input.
    data: Any = None

    @model_validator(mode="after")
    def _one_of(self):
        if self.task == "plugin":  # the plugin reads data (its route checks there is one)
            return self
        self._text_or_messages(self.input, "input")
        return self

    def pooling_params(self) -> PoolingParams:
        chunking = self.late_chunking_params
        return PoolingParams(dimensions=self.dimensions, normalize=self.normalize,
                             truncation_side=self.truncation_side, padding=self.padding,
                             use_activation=self.use_activation, activation=self.activation,
                             softmax=self.softmax, embedding_mode=self.embedding_mode,
                             late_chunking_params=(LateChunkingParams(chunking.chunk_size)
                                                   if chunking is not None else None))


class ClassificationRequest(InputOrMessages, ActivationFields):
    model: str | None = None
    user: str | None = None


# The two sides of a score request under each name vLLM has accepted for them.
_SCORE_SIDES = (("text_1", "text_2"), ("queries", "documents"), ("queries", "items"),
                ("data_1", "data_2"))


class ScoreRequest(ActivationFields, ScoringFields):
    """``text_1`` x ``text_2``; vLLM's newer names for the two sides (``queries`` and
    ``documents`` or ``items``, ``data_1`` and ``data_2``) are read as these."""

    model: str | None = None
    text_1: StrictStr | Items[StrictStr]
    text_2: StrictStr | ContentDocument | Items[StrictStr | ContentDocument]
    user: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _other_side_names(cls, data):
        if not isinstance(data, dict) or "text_1" in data or "text_2" in data:
            return data
        for first, second in _SCORE_SIDES[1:]:
            if first in data and second in data:
                return {**data, "text_1": data[first], "text_2": data[second]}
        return data


class RerankRequest(ActivationFields, ScoringFields):
    model: str | None = None
    query: StrictStr
    documents: Items[StrictStr | ContentDocument]
    top_n: StrictInt = Field(default=0, description="How many results; 0 or less returns all.")
    # Cohere's: false leaves each result's document out.
    return_documents: StrictBool = True
    user: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _client_spellings(cls, data):
        """Cohere's v1 clients send documents as ``{"text": ...}`` objects, and Jina-style
        clients send ``"top_n": null`` for all of them: both read as the plain forms."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if data.get("top_n", 0) is None:
            data["top_n"] = 0
        documents = data.get("documents")
        if isinstance(documents, list):
            data["documents"] = [d["text"] if isinstance(d, dict)
                                 and isinstance(d.get("text"), str) else d for d in documents]
        return data


# ---- responses ---------------------------------------------------------


class PromptTokenUsageInfo(APIModel):
    cached_tokens: int | None = None


class UsageInfo(APIModel):
    prompt_tokens: int = 0
    total_tokens: int = 0
    completion_tokens: int = 0
    prompt_tokens_details: PromptTokenUsageInfo | None = None

    @classmethod
    def of_prompts(cls, num_tokens: int) -> UsageInfo:
        return cls(prompt_tokens=num_tokens, total_tokens=num_tokens)

    @classmethod
    def of_outputs(cls, outputs: list) -> UsageInfo:
        """The tokens the model read for ``outputs`` (an image's are its vision tokens)."""
        return cls.of_prompts(sum(o.num_input_tokens for o in outputs))


class SparseVector(APIModel):
    """A sparse embedding: vocabulary ids (ascending) and their weights."""

    indices: list[int]
    values: list[float]


class EmbeddingResponseData(APIModel):
    index: int
    object: Literal["embedding"] = "embedding"
    embedding: list[float] | str | SparseVector


class EmbeddingResponse(APIModel):
    id: str = Field(default_factory=lambda: random_id("embd"))
    object: Literal["list"] = "list"
    created: int = Field(default_factory=now)
    model: str
    data: list[EmbeddingResponseData]
    usage: UsageInfo


class LateChunkedData(APIModel):
    """An output row whose ``late_chunking`` field (vLLM's) is written only when chunked."""

    @model_serializer(mode="wrap")
    def _late_chunking_when_chunked(self, handler):
        return {k: v for k, v in handler(self).items()
                if k != "late_chunking" or v is not None}


class TokenEmbeddingResponseData(LateChunkedData):
    """``/v1/embeddings`` on a token_embed server (vLLM's): per input, its token vectors
    (with late chunking, its chunk vectors and where each chunk lies)."""

    index: int
    object: Literal["embedding"] = "embedding"
    embedding: list[list[float]]
    late_chunking: LateChunkingMetadata | None = None


class TokenEmbeddingResponse(APIModel):
    id: str = Field(default_factory=lambda: random_id("embd"))
    object: Literal["list"] = "list"
    created: int = Field(default_factory=now)
    model: str
    data: list[TokenEmbeddingResponseData]
    usage: UsageInfo


class PoolingResponseData(LateChunkedData):
    """A ``/pooling`` row; with late chunking, the token and character range of each row."""

    index: int
    object: Literal["pooling"] = "pooling"
    data: list[list[float]] | list[float] | str
    late_chunking: LateChunkingMetadata | None = None


class IOProcessorResponse(APIModel):
    """``/pooling``'s answer to ``task: "plugin"``: the plugin's own answer in ``data``."""

    request_id: str | None = None
    created_at: int = Field(default_factory=now)
    data: Any


class PoolingResponse(APIModel):
    id: str = Field(default_factory=lambda: random_id("pool"))
    object: Literal["list"] = "list"
    created: int = Field(default_factory=now)
    model: str
    data: list[PoolingResponseData]
    usage: UsageInfo


class ClassificationData(APIModel):
    index: int
    label: str | None
    probs: list[float]
    num_classes: int


class ClassificationResponse(APIModel):
    id: str = Field(default_factory=lambda: random_id("classify"))
    object: Literal["list"] = "list"
    created: int = Field(default_factory=now)
    model: str
    data: list[ClassificationData]
    usage: UsageInfo


class ScoreResponseData(APIModel):
    index: int
    object: Literal["score"] = "score"
    score: float


class ScoreResponse(APIModel):
    id: str = Field(default_factory=lambda: random_id("score"))
    object: Literal["list"] = "list"
    created: int = Field(default_factory=now)
    model: str
    data: list[ScoreResponseData]
    usage: UsageInfo


class RerankDocument(APIModel):
    """The document as sent: its text, or its content parts."""

    text: str | None = None
    content: list[dict[str, Any]] | None = None

    @model_serializer(mode="wrap")
    def _as_sent_only(self, handler):
        return {k: v for k, v in handler(self).items() if v is not None}


class RerankResult(APIModel):
    index: int
    document: RerankDocument | None = None
    relevance_score: float

    @model_serializer(mode="wrap")
    def _document_when_asked(self, handler):
        return {k: v for k, v in handler(self).items() if k != "document" or v is not None}


class RerankUsage(APIModel):
    """vLLM's: the tokens read, twice (no output tokens)."""

    prompt_tokens: int = 0
    total_tokens: int


class RerankResponse(APIModel):
    id: str = Field(default_factory=lambda: random_id("rerank"))
    model: str
    usage: RerankUsage
    results: list[RerankResult]


class ErrorInfo(APIModel):
    """What went wrong: a message for people, the error's type (``BadRequestError``), the
    request field at fault where one is, and the HTTP status."""

    message: str
    type: str
    param: str | None = None
    code: int


class ErrorResponse(APIModel):
    """The one error shape every failure answers with (vLLM 0.34's, OpenAI's own):
    ``{"error": {"message", "type", "param", "code"}}``."""

    error: ErrorInfo

