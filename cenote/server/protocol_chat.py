"""The chat form of requests (vLLM's ``messages``): text parts, and image parts for
models that take images."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, StrictBool, StrictStr

from cenote.server.protocol_base import APIModel, Items


class TextPart(APIModel):
    type: Literal["text"]
    text: StrictStr


class ImageURL(APIModel):
    url: StrictStr


class ImagePart(APIModel):
    type: Literal["image_url"]
    image_url: ImageURL


class VideoURL(APIModel):
    url: StrictStr


class VideoPart(APIModel):
    """A video (vision-language models): ``{"type": "video_url", "video_url": {"url": ...}}``."""

    type: Literal["video_url"]
    video_url: VideoURL


ContentPart = Annotated[TextPart | ImagePart | VideoPart, Field(discriminator="type")]


class ChatMessage(APIModel):
    model_config = ConfigDict(extra="allow")  # name, tool fields...: the template may read them

    role: StrictStr
    content: StrictStr | Items[ContentPart] | None = None

    def parts(self) -> list[TextPart | ImagePart | VideoPart]:
        if isinstance(self.content, list):
            return list(self.content)
        return [TextPart(type="text", text=self.content)] if self.content else []

    def as_dict(self) -> dict[str, Any]:
        # Text parts joined as vLLM joins them; other fields (name, ...) kept for templates.
        content = self.content or ""
        if isinstance(content, list):
            if any(isinstance(part, (ImagePart, VideoPart)) for part in content):
                raise ValueError("This model takes text only; image inputs need a "
                                 "multi-modal model (CLIP, SigLIP).")
            content = "\n".join(part.text for part in content)
        return {**(self.model_extra or {}), "role": self.role, "content": content}


class ChatFields(APIModel):
    """vLLM's chat form of a request: ``messages`` rendered with the model's chat
    template, for models trained on chat-formatted text. ``add_special_tokens``
    defaults, as in vLLM, to false with ``messages`` (the template writes them) and
    true for plain text."""

    messages: Items[ChatMessage] | None = None
    add_special_tokens: StrictBool | None = None
    add_generation_prompt: StrictBool = False
    continue_final_message: StrictBool = False
    chat_template: StrictStr | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    # A vision-language model's processor options: min_pixels, max_pixels, fps, num_frames.
    mm_processor_kwargs: dict[str, Any] | None = None

    def _text_or_messages(self, text: object, name: str) -> None:
        if (text is None) == (self.messages is None):
            raise ValueError(f"give either {name} or messages")
        if self.messages is not None and not self.messages:
            raise ValueError("messages must not be empty")

    @property
    def special_tokens(self) -> bool:
        if self.add_special_tokens is not None:
            return self.add_special_tokens
        return self.messages is None


class ContentDocument(APIModel):
    """A score or rerank document given as content parts (an image for models that
    take images): ``{"content": [{"type": "image_url", "image_url": {"url": ...}}]}``."""

    content: Items[ContentPart]
