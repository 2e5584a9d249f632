"""Request and response bodies of Cohere's embed API (``POST /v2/embed``, and v1's
``POST /v1/embed``), as Cohere's clients send and parse them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, StrictInt, StrictStr, model_serializer, model_validator

from cenote.server.protocol_base import APIModel, Items, PoolingRequestFields, random_id
from cenote.server.protocol_chat import ImagePart, ImageURL, TextPart


class CohereContent(APIModel):
    """A part of a Cohere ``inputs`` item: text (images need a model that takes them)."""

    type: Literal["text", "image_url"]
    text: StrictStr | None = None
    image_url: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _has_its_payload(self):
        if self.type == "text" and self.text is None:
            raise ValueError("CohereEmbedContent with type='text' requires text")
        url = (self.image_url or {}).get("url")
        if self.type == "image_url" and not (isinstance(url, str) and url):  # "" too
            raise ValueError("CohereEmbedContent with type='image_url' requires image_url.url")
        return self

    def chat_part(self) -> TextPart | ImagePart:
        """This part as a chat message's content part."""
        if self.type == "image_url":
            return ImagePart(type="image_url", image_url=ImageURL(url=self.image_url["url"]))
        return TextPart(type="text", text=self.text)


class CohereInput(APIModel):
    content: Items[CohereContent]


class CohereEmbedRequest(PoolingRequestFields):
    """Cohere's ``POST /v2/embed``: ``texts`` (or ``inputs`` of text parts), the
    ``input_type`` that picks the model's instruction, ``embedding_types`` to return,
    ``output_dimension`` (Matryoshka rules) and ``truncate`` for long inputs."""

    model: str | None = None
    texts: Items[StrictStr] | None = None
    images: Items[StrictStr] | None = None
    inputs: Items[CohereInput] | None = None
    input_type: StrictStr | None = None
    embedding_types: Items[StrictStr] | None = None
    output_dimension: StrictInt | None = None
    max_tokens: StrictInt | None = None
    truncate: Literal["NONE", "START", "END"] = "END"

    @model_validator(mode="after")
    def _one_input_kind(self):
        given = [name for name in ("texts", "images", "inputs") if getattr(self, name)]
        if len(given) != 1:
            raise ValueError("Exactly one of texts, images, or inputs must be provided, and it "
                             "must be non-empty")
        return self


class CohereBilledUnits(APIModel):
    input_tokens: int
    image_tokens: int = 0


class CohereApiVersion(APIModel):
    version: str = "2"


class CohereMeta(APIModel):
    api_version: CohereApiVersion = Field(default_factory=CohereApiVersion)
    billed_units: CohereBilledUnits


class CohereEmbeddings(APIModel):
    """One list per requested type, in input order; types not asked for are left out."""

    model_config = ConfigDict(serialize_by_alias=True, validate_by_name=True)

    float_: list[list[float]] | None = Field(default=None, alias="float")
    int8: list[list[int]] | None = None
    uint8: list[list[int]] | None = None
    binary: list[list[int]] | None = None
    ubinary: list[list[int]] | None = None
    base64: list[str] | None = None

    @model_serializer(mode="wrap")
    def _asked_for_only(self, handler):
        return {k: v for k, v in handler(self).items() if v is not None}


class CohereEmbedResponse(APIModel):
    id: str = Field(default_factory=lambda: random_id("embed"))
    response_type: Literal["embeddings_by_type"] = "embeddings_by_type"
    embeddings: CohereEmbeddings
    texts: list[str]
    meta: CohereMeta


class CohereEmbedFloatsResponse(APIModel):
    """v1's answer when no ``embedding_types`` are asked for: the float vectors alone."""

    id: str = Field(default_factory=lambda: random_id("embed"))
    response_type: Literal["embeddings_floats"] = "embeddings_floats"
    embeddings: list[list[float]]
    texts: list[str]
    meta: CohereMeta
