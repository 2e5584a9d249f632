"""Requests for vision-language models (Qwen2-VL): chat messages whose text, image and
video parts become one prompt. The media are fetched and their headers checked (and
charged to the request's pixel budget) before anything is decoded; the messages are
rendered through the chat template with each part where the template puts its
placeholders."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool

from cenote.inputs.prompts import Prompt
from cenote.server.protocol_chat import ChatFields, ChatMessage, ImagePart, VideoPart

if TYPE_CHECKING:
    from cenote.server.context import ModelContext


async def vision_language_prompt(m: ModelContext, messages: list[ChatMessage],
                                 body: ChatFields | None) -> Prompt:
    """``messages`` as one prompt: the rendered text with its placeholders and the images
    and videos they stand for (text alone when there are none)."""
    processor = m.engine.engine.images
    media = m.server.media
    kwargs = body.mm_processor_kwargs if body is not None else None
    parts = [part for message in messages for part in message.parts()]
    most_images, most_videos = media.limits(vision_language=True)
    for kind, limit in (("images", most_images), ("videos", most_videos)):
        count = sum(isinstance(p, ImagePart if kind == "images" else VideoPart) for p in parts)
        if count > limit:
            raise ValueError(f"{count} {kind} in one prompt; this server takes at most {limit} "
                             "(--limit-mm-per-prompt).")
    rendered = []
    for message in messages:
        content: Any = message.content
        if isinstance(content, list):
            content = [await _fetched(m, part, kwargs) for part in content]
        rendered.append({**(message.model_extra or {}), "role": message.role,
                         "content": content})
    options = m.template_options(body) if body is not None else {}
    text, images, videos = await run_in_threadpool(processor.render, m.engine.engine.tokenizer.hf,
                                                   rendered, **options)
    if not images and not videos:
        return text
    data = {"image": images, "video": videos}
    return {"prompt": text, "multi_modal_data": {k: v for k, v in data.items() if v},
            "mm_processor_kwargs": kwargs or {}}


async def _fetched(m: ModelContext, part: Any, kwargs: dict[str, Any] | None) -> dict:
    """A content part as the template and the processor read it, its media fetched."""
    media, processor = m.server.media, m.engine.engine.images
    if isinstance(part, ImagePart):
        return {"type": "image_url",
                "image_url": await media.image(part.image_url.url, processor.min_image_pixels)}
    if isinstance(part, VideoPart):
        return {"type": "video_url", "video_url": await media.video(
            part.video_url.url, lambda video: processor.decoded_frames(video, kwargs))}
    return part.model_dump()
