"""Bodies of the routes around the model (vLLM's and OpenAI's names): /tokenize and
/detokenize, /v1/models, /version and /health."""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import Field, StrictBool, StrictInt, StrictStr, model_validator

from cenote.server.protocol_base import APIModel, Items, now
from cenote.server.protocol_chat import ChatFields


class TokenizeRequest(ChatFields):
    """``prompt``, or ``messages`` rendered with the chat template (as vLLM)."""

    model: str | None = None
    prompt: StrictStr | None = None
    return_token_strs: StrictBool = False
    # As vLLM's chat tokenize request: the assistant's header included by default.
    add_generation_prompt: StrictBool = True

    @model_validator(mode="after")
    def _one_of(self):
        self._text_or_messages(self.prompt, "prompt")
        return self


class DetokenizeRequest(APIModel):
    model: str | None = None
    tokens: Items[StrictInt]


class ModelPermission(APIModel):
    """What vLLM's /v1/models lists per model (clients may read ``permission[0]``)."""

    id: str = Field(default_factory=lambda: f"modelperm-{uuid.uuid4().hex}")
    object: Literal["model_permission"] = "model_permission"
    created: int = Field(default_factory=now)
    allow_create_engine: bool = False
    allow_sampling: bool = False
    allow_logprobs: bool = False
    allow_search_indices: bool = False
    allow_view: bool = True
    allow_fine_tuning: bool = False
    organization: str = "*"
    group: str | None = None
    is_blocking: bool = False


class ModelCard(APIModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=now)
    owned_by: str = "cenote"
    root: str | None = None
    parent: str | None = None
    max_model_len: int | None = None
    modalities: list[str] = Field(default_factory=lambda: ["text"])
    permission: list[ModelPermission] = Field(default_factory=lambda: [ModelPermission()])


class ModelList(APIModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class TokenizeResponse(APIModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeResponse(APIModel):
    prompt: str


class VersionResponse(APIModel):
    version: str


class EngineCapacity(APIModel):
    """A served model's engines, and how many of them take work now."""

    model: str
    alive: int
    total: int


class HealthResponse(APIModel):
    """/health's body when the server runs below full capacity (an engine restarting)."""

    status: Literal["degraded"]
    engines: list[EngineCapacity]
