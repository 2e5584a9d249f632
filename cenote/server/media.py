"""Images and videos named in requests: where they may come from, and fetching them.

- ``data:image/...;base64,...`` always;
- ``file://`` only under ``--allowed-local-media-path`` (no ``..`` or link escapes);
- ``http(s)://`` only from hosts in ``--allowed-media-domains``, with a timeout, a
  size cap and no redirects (a redirect could lead off the allowed hosts).

Anything else is refused with a message naming the flag that would allow it; a
server never fetches a URL its operator did not allow. An image is read only as far
as its header here: its size is checked and charged to the request's pixel budget
(:class:`~cenote.server.guard.RequestMedia`), and it is decoded later, one at a time,
when the engine makes the request's records. URLs are logged without credentials or
query strings (presigned URLs carry secrets there).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
from starlette.concurrency import run_in_threadpool

from cenote.inputs.images import DEFAULT_MAX_IMAGE_PIXELS, EncodedImage, read_header
from cenote.inputs.video import (
    DEFAULT_MAX_VIDEO_FRAMES,
    DEFAULT_MAX_VIDEO_SECONDS,
    EncodedVideo,
    read_video_header,
)
from cenote.server.guard import request_media

logger = logging.getLogger(__name__)
# httpx logs every request's full URL at INFO, credentials and query string included.
logging.getLogger("httpx").setLevel(logging.WARNING)


def loggable_url(url: str) -> str:
    """``url`` fit for a log: scheme, host and path, without userinfo, query or fragment;
    a data: URL as its media type and length."""
    parts = urlsplit(url)
    if parts.scheme.lower() == "data":
        return f"{url.partition(',')[0][:64]},... ({len(url)} characters)"
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


@dataclass(frozen=True)
class MediaPolicy:
    """Which image sources a server takes, and its limits; each is a ``cenote serve`` flag."""

    allowed_local_media_path: Path | None = None
    allowed_media_domains: frozenset[str] = field(default_factory=frozenset)
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_image_bytes: int = 20 * 1024 * 1024
    max_video_bytes: int = 200 * 1024 * 1024
    # The whole fetch of a remote image, however slowly its host sends it.
    fetch_timeout_s: float = 10.0
    # Images and videos per prompt (--limit-mm-per-prompt '{"image": N, "video": M}');
    # None: the model's default (a dual encoder embeds one image; a VLM reads several).
    max_images_per_prompt: int | None = None
    max_videos_per_prompt: int | None = None
    # A video's frames and length, read from its container's header before decoding.
    max_video_frames: int = DEFAULT_MAX_VIDEO_FRAMES
    max_video_seconds: float = DEFAULT_MAX_VIDEO_SECONDS

    @classmethod
    def from_flags(cls, args: Any) -> MediaPolicy:
        """The policy of ``cenote serve``'s media flags (``SystemExit`` for bad ones)."""
        limits = args.limit_mm_per_prompt or {}
        if set(limits) - {"image", "video"} or any(
                isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in limits.values()):
            raise SystemExit("--limit-mm-per-prompt takes '{\"image\": N, \"video\": M}' with "
                             "N, M >= 0.")
        folder = args.allowed_local_media_path
        if folder is not None and not Path(folder).is_dir():
            raise SystemExit(f"--allowed-local-media-path {folder!r} is not a folder.")
        return cls(allowed_local_media_path=Path(folder) if folder else None,
                   allowed_media_domains=frozenset(d.lower() for d in args.allowed_media_domains),
                   max_image_pixels=args.max_image_pixels,
                   max_images_per_prompt=limits.get("image"),
                   max_videos_per_prompt=limits.get("video"),
                   max_video_frames=args.max_video_frames,
                   max_video_seconds=args.max_video_seconds)

    def limits(self, vision_language: bool) -> tuple[int, int]:
        """Images and videos a prompt may hold: the flag's, else the model's default (a
        dual encoder embeds one image and no video; a VLM reads up to 16 and 2)."""
        default_images, default_videos = (16, 2) if vision_language else (1, 0)
        return (default_images if self.max_images_per_prompt is None
                else self.max_images_per_prompt,
                default_videos if self.max_videos_per_prompt is None
                else self.max_videos_per_prompt)

    async def image(self, url: str, min_pixels: int = 0) -> EncodedImage:
        """The image ``url`` names, its header checked and its pixels (at least
        ``min_pixels``: what it costs pre-processed) charged to the request's budget;
        ``ValueError`` for anything not allowed or not an image."""
        data = await self._bytes(url)
        if len(data) > self.max_image_bytes:
            raise ValueError(f"The image is {len(data)} bytes, more than the "
                             f"{self.max_image_bytes} this server takes.")
        image = read_header(data, self.max_image_pixels)
        media = request_media.get()
        if media is not None:
            await media.charge(max(image.pixels, min_pixels), len(data))
        return image

    async def video(self, url: str, decoded_frames: Callable[[EncodedVideo], int]
                    ) -> EncodedVideo:
        """The video ``url`` names, its container header checked (frames, length, frame
        size) and the pixels of the ``decoded_frames(video)`` frames it will decode
        charged to the request's budget; ``ValueError`` for anything not allowed or not
        a video. Nothing is decoded here."""
        data = await self._bytes(url, "video")
        if len(data) > self.max_video_bytes:
            raise ValueError(f"The video is {len(data)} bytes, more than the "
                             f"{self.max_video_bytes} this server takes.")
        video = await run_in_threadpool(read_video_header, data, self.max_video_frames,
                                        self.max_video_seconds, self.max_image_pixels)
        media = request_media.get()
        if media is not None:
            await media.charge(decoded_frames(video) * video.width * video.height, len(data))
        return video

    async def _bytes(self, url: str, kind: str = "image") -> bytes:
        if not isinstance(url, str) or not url:
            raise ValueError(f"{kind}_url.url must be a non-empty string.")
        scheme = urlsplit(url).scheme.lower()
        if scheme == "data":
            return _data_uri(url, kind)
        if scheme == "file":
            return await run_in_threadpool(self._local_file, url, kind)
        if scheme in ("http", "https"):
            return await self._remote(url, kind)
        raise ValueError(f"{kind.capitalize()} URLs may be data:, file: or http(s): URLs, "
                         f"not {scheme or url!r}.")

    def _local_file(self, url: str, kind: str = "image") -> bytes:
        root = self.allowed_local_media_path
        if root is None:
            raise ValueError(f"file:// {kind}s are not allowed on this server (start it with "
                             "--allowed-local-media-path DIR to allow a folder).")
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise ValueError("file:// URLs must name a local path (file:///path).")
        path = Path(unquote(parts.path)).resolve()
        allowed = root.resolve()
        if not path.is_relative_to(allowed):
            raise ValueError(f"The file {unquote(parts.path)!r} is outside the folder "
                             "--allowed-local-media-path allows.")
        if not path.is_file():
            raise ValueError(f"No such {kind} file: {unquote(parts.path)!r}.")
        if path.stat().st_size > self._max_bytes(kind):
            raise ValueError(f"The {kind} file is larger than the {self._max_bytes(kind)} bytes "
                             "this server takes.")
        return path.read_bytes()

    async def _remote(self, url: str, kind: str = "image") -> bytes:
        host = (urlsplit(url).hostname or "").lower()
        if host not in self.allowed_media_domains:
            raise ValueError(f"{kind.capitalize()}s from {host or url!r} are not allowed on "
                             "this server (start it with --allowed-media-domains HOST to "
                             "allow a host).")
        logger.debug("Fetching the %s at %s", kind, loggable_url(url))
        try:
            return await asyncio.wait_for(self._fetch(url, kind), self.fetch_timeout_s)
        except asyncio.TimeoutError:
            raise ValueError(f"Fetching the {kind} took longer than {self.fetch_timeout_s:g} s."
                             ) from None

    def _max_bytes(self, kind: str) -> int:
        return self.max_video_bytes if kind == "video" else self.max_image_bytes

    async def _fetch(self, url: str, kind: str = "image") -> bytes:
        try:
            async with httpx.AsyncClient(timeout=self.fetch_timeout_s,
                                         follow_redirects=False) as client:
                async with client.stream("GET", url) as response:
                    if response.status_code != 200:
                        raise ValueError(f"Fetching the {kind} answered HTTP "
                                         f"{response.status_code}.")
                    data = bytearray()
                    async for chunk in response.aiter_bytes():
                        data += chunk
                        if len(data) > self._max_bytes(kind):
                            raise ValueError(f"The {kind} is larger than the "
                                             f"{self._max_bytes(kind)} bytes this server takes.")
                    return bytes(data)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise ValueError(f"Could not fetch the {kind}: {type(exc).__name__}.") from None


def _data_uri(url: str, kind: str = "image") -> bytes:
    header, _, payload = url.partition(",")
    if not header.lower().startswith(f"data:{kind}/") or not header.lower().endswith(";base64"):
        raise ValueError(f"A data: {kind} URL must be data:{kind}/<type>;base64,<data>.")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"The data: {kind} URL is not valid base64.") from None
