"""Request and response bodies of text-embeddings-inference's API (``/embed``,
``/embed_all``, ``/embed_sparse``, ``/similarity``, ``/predict``, TEI's ``/rerank``,
``/info``), as TEI's router reads and writes them, so TEI's clients work unchanged.

TEI's answers are bare lists (``[[0.1, ...]]``, ``[{"index", "score"}]``), and its
errors are ``{"error": "...", "error_type": "Validation"}``. cenote adds one field TEI
does not have: ``model``, which of several served models answers (the first by default).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, StrictBool, StrictInt, StrictStr, model_serializer

from cenote.inputs.prompts import Prompt
from cenote.server.protocol_base import APIModel, Items

# TEI reads either spelling.
TruncationDirection = Literal["Left", "Right", "left", "right"]

# A text or token ids, or a batch of them (TEI's ``Input``).
TEIInput = StrictStr | Items[StrictInt] | Items[StrictStr | Items[StrictInt]]

# A text or a [text, text] pair, or a batch of [text] and [text, text] (TEI's ``PredictInput``).
PredictInput = StrictStr | Items[StrictStr] | Items[Items[StrictStr]]

# TEI's error types (its ErrorType, serialised by name) and the status each answers.
TEI_ERROR_STATUS = {"Empty": 400, "Validation": 422, "Tokenizer": 422, "Backend": 424,
                    "Overloaded": 429, "Unhealthy": 503}


class TruncationParameters(APIModel):
    """``truncate`` cuts an over-long input to the model's length instead of refusing it
    (unset: refused, cenote's default), from the ``truncation_direction`` end."""

    truncate: StrictBool | None = None
    truncation_direction: TruncationDirection = "Right"

    def truncate_prompt_tokens(self) -> int | None:
        return -1 if self.truncate else None

    @property
    def truncation_side(self) -> str:
        return self.truncation_direction.lower()


class TEIInputRequest(TruncationParameters):
    """The fields of ``/embed``, ``/embed_all`` and ``/embed_sparse``: ``inputs`` and
    ``prompt_name`` (a Sentence-Transformers prompt of the model)."""

    model: str | None = None
    inputs: TEIInput
    prompt_name: StrictStr | None = None

    def prompts(self) -> list[Prompt]:
        """The inputs as engine prompts: texts as they are, token ids as id prompts."""
        if isinstance(self.inputs, str):
            return [self.inputs]
        if self.inputs and all(isinstance(i, int) for i in self.inputs):
            return [{"prompt_token_ids": list(self.inputs)}]
        return [item if isinstance(item, str) else {"prompt_token_ids": item}
                for item in self.inputs]


class TEIEmbedRequest(TEIInputRequest):
    """``/embed``: normalised by default, as TEI; ``dimensions`` keeps the first ones."""

    normalize: StrictBool = True
    dimensions: StrictInt | None = None


class SimilarityInput(APIModel):
    source_sentence: StrictStr
    sentences: Items[StrictStr]


class SimilarityParameters(TruncationParameters):
    prompt_name: StrictStr | None = None


class TEISimilarityRequest(APIModel):
    """``/similarity``: the cosine of ``source_sentence`` with each of ``sentences``."""

    model: str | None = None
    inputs: SimilarityInput
    parameters: SimilarityParameters = Field(default_factory=SimilarityParameters)


class TEIPredictRequest(TruncationParameters):
    """``/predict``: class scores of a text or a text pair, or of a batch of them;
    ``raw_scores`` skips the activation (softmax or sigmoid)."""

    model: str | None = None
    inputs: PredictInput
    raw_scores: StrictBool = False

    @property
    def is_batch(self) -> bool:
        return bool(self.inputs) and isinstance(self.inputs[0], list)

    def sequences(self) -> list[tuple[str] | tuple[str, str]]:
        """Each input as a text or a pair; ``ValueError`` for a list of three or more."""
        batch = self.inputs if self.is_batch else [self.inputs]
        sequences = []
        for i, item in enumerate(batch):
            sequence = (item,) if isinstance(item, str) else tuple(item)
            if len(sequence) not in (1, 2):
                raise ValueError(f"inputs[{i}] has {len(sequence)} texts; an input is a text "
                                 "or a pair of texts.")
            sequences.append(sequence)
        return sequences


class TEIRerankRequest(TruncationParameters):
    """TEI's ``/rerank``: ``texts`` ranked against ``query``; told apart from the
    vLLM/Cohere body by ``texts`` (and no ``documents``)."""

    model: str | None = None
    query: StrictStr
    texts: Items[StrictStr]
    raw_scores: StrictBool = False
    return_text: StrictBool = False


class Prediction(APIModel):
    score: float
    label: str


class Rank(APIModel):
    index: int
    text: str | None = None
    score: float

    @model_serializer(mode="wrap")
    def _text_when_asked(self, handler):
        return {k: v for k, v in handler(self).items() if k != "text" or v is not None}


class TEIInfo(APIModel):
    """``GET /info``, TEI's fields. ``model_type`` is ``{"embedding": {"pooling"}}``,
    ``{"classifier": {"id2label", "label2id"}}`` or ``{"reranker": ...}`` (one label).
    What cenote does not bound (concurrent requests, tokenisation workers) is null."""

    model_id: str
    model_sha: str | None = None
    model_dtype: str
    served_model_name: str
    model_type: dict[str, dict[str, Any]]
    max_concurrent_requests: int | None = None
    max_input_length: int
    max_batch_tokens: int
    max_batch_requests: int | None = None
    max_client_batch_size: int
    auto_truncate: bool = False
    tokenization_workers: int | None = None
    version: str
    sha: str | None = None
    docker_label: str | None = None


class TEIErrorResponse(APIModel):
    """TEI's error shape: a message and one of ``TEI_ERROR_STATUS``'s types."""

    error: str
    error_type: str
