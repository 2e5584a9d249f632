"""vLLM's multimodal score input offline (``ScoreMultiModalParam``): ``{"content": [parts]}``
as one query or document. Text parts join into a text; one image part (``image_url`` with
a ``data:`` URL, or ``image_pil``) makes an image prompt. Remote URLs are not fetched
offline: open the image and pass it as ``image_pil`` (or a ``multi_modal_data`` prompt)."""

from __future__ import annotations

import base64
import binascii
from typing import Any


def content_input(content: Any, where: str) -> str | dict[str, Any]:
    """``content`` (a list of content parts) as a text or an image prompt."""
    if not isinstance(content, list) or not content:
        raise ValueError(f"{where}: content must be a non-empty list of content parts.")
    texts, images = [], []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            images.append(_data_url_bytes(url, where))
        elif kind == "image_pil" and part.get("image_pil") is not None:
            images.append(part["image_pil"])
        else:
            raise ValueError(f"{where}: content parts are text, image_url or image_pil, not "
                             f"{kind or type(part).__name__!r}.")
    if images and texts:
        raise ValueError(f"{where}: a score input is a text or an image, not both.")
    if len(images) > 1:
        raise ValueError(f"{where}: one image per score input, not {len(images)}.")
    if images:
        return {"prompt": "", "multi_modal_data": {"image": images[0]}}
    return "\n".join(texts)


def _data_url_bytes(url: Any, where: str) -> bytes:
    if not isinstance(url, str) or not url.startswith("data:"):
        raise ValueError(f"{where}: offline, an image_url is a data: URL (remote images are "
                         "not fetched; pass the opened image as image_pil).")
    header, _, data = url.partition(",")
    if not header.endswith(";base64"):
        raise ValueError(f"{where}: an image data: URL must be base64-encoded.")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{where}: the image data: URL is not valid base64.") from None
