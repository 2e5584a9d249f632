"""What every route needs: the served models (names and engines), the limits and the
metrics; and, per request, the model it asks for (:class:`ModelContext`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from starlette.exceptions import HTTPException as StarletteHTTPException

from cenote.config.lora import LoRARequest
from cenote.engine.async_engine import AsyncPoolingEngine
from cenote.engine.io_processor import IOProcessor
from cenote.inputs.prompts import Prompt
from cenote.server.errors import ModelNotFoundError
from cenote.server.guard import MediaBudget
from cenote.server.media import MediaPolicy
from cenote.server.metrics import ServerMetrics
from cenote.server.multimodal import vision_language_prompt
from cenote.server.protocol_chat import ChatFields, ChatMessage, ImagePart, TextPart, VideoPart


@dataclass(frozen=True)
class ServerLimits:
    """What the server refuses, and when it gives up; each is a ``cenote serve`` flag.

    (Admission control by queued tokens belongs to the engine: see
    ``AsyncPoolingEngine(max_queued_tokens=...)``.)
    """

    max_request_body_bytes: int = 32 * 1024 * 1024
    """Bodies larger than this are refused with 413 before they are parsed."""
    max_inputs_per_request: int = 2048
    """Inputs (texts, token-id prompts, score pairs, rerank documents) per request; 400 above."""
    request_timeout_s: float = 120.0
    """A request still unanswered after this long gets 504 and its queued work is dropped."""
    engine_stall_timeout_s: float = 120.0
    """/health fails once the busy engine has not started or finished a batch for this long."""
    request_body_timeout_s: float = 30.0
    """A request body still arriving after this long gets 408 (slow or stalled clients)."""
    max_mm_pixels_per_request: int = 64_000_000
    """Image pixels (from headers, before decoding) one request may carry; 400 above."""
    max_mm_pixels_in_flight: int = 128_000_000
    """Image pixels all requests being answered may hold at once; more wait, then 429."""

    @property
    def max_json_containers(self) -> int:
        """JSON arrays and objects one body may hold (400 above, before it is parsed):
        room for every input to be a token-id list or a message of several parts."""
        return max(65536, 16 * self.max_inputs_per_request)


@dataclass(frozen=True)
class ServedModel:
    """A model the server serves: the names clients may ask for it by (the first is
    its own) and its engine."""

    names: list[str]
    engine: AsyncPoolingEngine
    # --io-processor-plugin: what answers its task "plugin" requests.
    io_processor: IOProcessor | None = None


@dataclass
class ServerContext:
    models: list[ServedModel]
    metrics: ServerMetrics
    limits: ServerLimits = field(default_factory=ServerLimits)
    # Set on SIGTERM: new requests get 503 while those in flight finish.
    draining: bool = False
    # --chat-template: the template for requests with messages, instead of the tokenizer's.
    chat_template: str | None = None
    # --trust-request-chat-template: a request's own Jinja chat template is rendered.
    trust_request_chat_template: bool = False
    # Where images may come from, and their limits.
    media: MediaPolicy = field(default_factory=MediaPolicy)
    # Image pixels per request and in flight (--max-mm-pixels-*).
    media_budget: MediaBudget = field(init=False)

    def __post_init__(self) -> None:
        self.media_budget = MediaBudget(self.limits.max_mm_pixels_per_request,
                                        self.limits.max_mm_pixels_in_flight)

    def model(self, requested: str | None) -> ModelContext:
        """The model a request asks for, by one of its served names; an unknown
        ``model`` is a 404 (OpenAI's behaviour). No ``model``, or an empty one, means
        the first model served (as vLLM)."""
        if not requested:
            first = self.models[0]
            return ModelContext(self, first.names[0], first.engine, first.io_processor)
        for model in self.models:  # a LoRA adapter's name: its base through the adapter
            if (adapter := model.engine.loras.get(requested)) is not None:
                return ModelContext(self, requested, AdapterEngine(model.engine, adapter),
                                    model.io_processor)
        served = self.served_as(requested)
        return ModelContext(self, requested, served.engine, served.io_processor)

    def served_as(self, name: str) -> ServedModel:
        """The model served under ``name``; 404 when none is."""
        for model in self.models:
            if name in model.names:
                return model
        raise ModelNotFoundError(name)

    def adapters(self) -> list[tuple[ServedModel, LoRARequest]]:
        """The LoRA adapters served, each with the model it adapts."""
        return [(model, adapter) for model in self.models
                for adapter in model.engine.loras.requests]

    def check_num_inputs(self, count: int, what: str = "input") -> None:
        """400 when a request carries more inputs than ``max_inputs_per_request``."""
        cap = self.limits.max_inputs_per_request
        if count > cap:
            raise ValueError(f"{what} has {count} items; this server takes at most {cap} "
                             "per request. Split it into several requests.")


class AdapterEngine:
    """A served engine whose ``encode`` and ``score`` run through one LoRA adapter (a
    request that named the adapter as its ``model``); everything else is the engine's."""

    def __init__(self, engine: AsyncPoolingEngine, adapter: LoRARequest) -> None:
        self.base = engine
        self.adapter = adapter

    async def encode(self, *args: Any, **kwargs: Any) -> Any:
        return await self.base.encode(*args, lora_request=self.adapter, **kwargs)

    async def score(self, *args: Any, **kwargs: Any) -> Any:
        return await self.base.score(*args, lora_request=self.adapter, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.base, name)


@dataclass(frozen=True)
class ModelContext:
    """A request's model: the name to answer with, its engine, and how its inputs are
    read (chat templates, images)."""

    server: ServerContext
    name: str
    engine: AsyncPoolingEngine
    io_processor: IOProcessor | None = None

    @property
    def scores(self) -> bool:
        """Whether the model serves ``/score`` and ``/rerank``: embedding models (by
        their vectors) and cross-encoders (classifiers with one label), as vLLM."""
        config = self.engine.config
        return config.task == "embed" or "score" in config.supported_pooling_tasks

    def require_scoring(self) -> None:
        """404 for ``/score`` and ``/rerank`` on a model that does not score: vLLM does not
        register those routes for it."""
        if not self.scores:
            config = self.engine.config
            what = (f"a classifier with {config.num_labels} labels" if config.task == "classify"
                    else f"a {config.task} model")
            raise StarletteHTTPException(404, f"Not Found: scoring is served for embedding "
                                              f"models and classifiers with one label; "
                                              f"{self.name} is {what}.")

    def special_tokens(self, body: ChatFields) -> bool:
        """Whether the request's text gets the tokenizer's special tokens: as the request
        says (by default not for messages a chat template rendered: it writes them);
        a dual encoder's messages are not rendered, so they get them by default."""
        modalities = self.engine.config.modalities
        if body.add_special_tokens is None and modalities == ("text", "image"):
            return True
        return body.special_tokens

    async def prompt_from_messages(self, body: ChatFields) -> Prompt:
        """A chat-form request's input: for a dual encoder (CLIP, SigLIP) its one image
        or its text parts; for a text model its messages through the chat template; for a
        vision-language model both (its images and videos beside)."""
        if "video" in self.engine.config.modalities:
            return await vision_language_prompt(self, body.messages, body)
        if "image" not in self.engine.config.modalities:
            return await self.render_chat(body)
        return await self.prompt_from_parts(
            [part for message in body.messages for part in message.parts()])

    async def prompt_from_parts(self, parts: list[TextPart | ImagePart | VideoPart]) -> Prompt:
        """Content parts as one input: an image (a model that takes images), or the text
        parts joined; for a vision-language model, one user message of them all."""
        modalities = self.engine.config.modalities
        if "video" in modalities:
            return await vision_language_prompt(
                self, [ChatMessage(role="user", content=list(parts))], None)
        if "image" not in modalities and any(
                isinstance(part, (ImagePart, VideoPart)) for part in parts):
            raise ValueError("This model takes text only; image inputs need a multi-modal "
                             "model (CLIP, SigLIP, Qwen2-VL).")
        if any(isinstance(part, VideoPart) for part in parts):
            raise ValueError("This model embeds texts and images, not videos; videos need a "
                             "vision-language model (Qwen2-VL).")
        urls = [part.image_url.url for part in parts if isinstance(part, ImagePart)]
        texts = [part.text for part in parts if isinstance(part, TextPart)]
        media = self.server.media
        most = media.limits(vision_language=False)[0]
        if len(urls) > most:
            raise ValueError(f"{len(urls)} images in one prompt; this server takes at most "
                             f"{most} (--limit-mm-per-prompt).")
        if urls and texts:
            raise ValueError("This model embeds a text or an image per input, not both: send "
                             "them as separate inputs.")
        if urls:
            # Even a 1x1 image costs a whole input of the vision tower once pre-processed.
            floor = self.engine.engine.images.min_image_pixels
            return {"prompt": "", "multi_modal_data": {"image": await media.image(urls[0],
                                                                                  floor)}}
        if not texts:
            raise ValueError("messages have no content to embed.")
        return "\n".join(texts)

    async def render_chat(self, body: ChatFields) -> str:
        """A chat-form request's ``messages`` as the text the model reads."""
        return await self.engine.render_chat([m.as_dict() for m in body.messages],
                                             **self.template_options(body))

    def template_options(self, body: ChatFields) -> dict[str, Any]:
        """How the request's messages are rendered: its chat template (where the server
        takes one from requests), the server's, or the tokenizer's; and its flags."""
        server = self.server
        if body.chat_template is not None and not server.trust_request_chat_template:
            raise ValueError("This server does not take chat templates in requests (start it "
                             "with --trust-request-chat-template to allow them).")
        return {"chat_template": body.chat_template or server.chat_template,
                "add_generation_prompt": body.add_generation_prompt,
                "continue_final_message": body.continue_final_message,
                "chat_template_kwargs": body.chat_template_kwargs}


async def get_context(request: Request) -> ServerContext:
    """FastAPI dependency: the app's :class:`ServerContext`.

    ``async`` on purpose: FastAPI runs plain ``def`` dependencies on its thread
    pool, a thread hop per request for a dictionary lookup.
    """
    return request.app.state.context
