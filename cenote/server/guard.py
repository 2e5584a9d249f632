"""What happens around every request: body cap, deadline, disconnects, draining.

:class:`RequestGuardMiddleware` reads the whole body itself, so it can refuse
an oversized one early (413, from ``Content-Length`` or by counting a chunked
body as it streams in), one that takes too long to arrive (408: a client that
drips a body holds a connection no longer than ``--request-body-timeout``), and
one whose JSON would cost too much to parse: ``json.loads`` holds the GIL, so a
body of millions of tiny arrays (4 s for 5 million) freezes every request even
on a worker thread, and is refused from a count of its brackets first. It then
runs the route in a task of its own and
watches the connection meanwhile: when the client goes away, or the request
outlives ``--request-timeout`` (504), the route is cancelled, and the engine
drops that request's sequences that have not run yet. While the server drains
on SIGTERM, new requests get 503.
"""

from __future__ import annotations

import asyncio
import logging
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cenote.server.errors import APIError, error_response
from cenote.server.protocol_base import client_request_id

if TYPE_CHECKING:
    from cenote.server.context import ServerContext

logger = logging.getLogger(__name__)

# With --log-inputs, this much of each body is logged.
_LOGGED_BODY_CHARS = 4096


def _request_id(scope: Scope) -> str | None:
    """The X-Request-Id header, if it is printable ASCII of at most 256 characters."""
    value = next((v for k, v in scope["headers"] if k == b"x-request-id"), None)
    if not value or len(value) > 256 or not all(32 <= c < 127 for c in value):
        return None
    return value.decode("ascii")


class MediaBudget:
    """Image pixels, counted from headers before anything is decoded: what one request
    may ask for (``--max-mm-pixels-per-request``) and what the requests being answered
    may hold at once (``--max-mm-pixels-in-flight``). A request over its own cap is a
    400; one that would take the server over its cap waits for others to finish, and
    gets 429 if they do not within ``wait_s``. Memory then stays bounded however many
    images arrive, instead of a few kilobytes of PNGs decoding into gigabytes."""

    def __init__(self, per_request: int, in_flight: int, wait_s: float = 10.0) -> None:
        if in_flight < per_request:
            raise ValueError(f"The in-flight image budget ({in_flight} pixels) must hold at "
                             f"least one request's ({per_request}).")
        self.per_request = per_request
        self.in_flight = in_flight
        self.wait_s = wait_s
        self.used = 0
        self._changed: asyncio.Condition | None = None

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:  # made in the server's event loop, on first use
            self._changed = asyncio.Condition()
        return self._changed

    async def acquire(self, pixels: int) -> None:
        changed = self._condition()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_s
        async with changed:
            while self.used + pixels > self.in_flight:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise APIError(429, "The server is decoding as many images as it may hold "
                                        "at once; retry shortly.", {"Retry-After": "1"})
                try:
                    await asyncio.wait_for(changed.wait(), remaining)
                except asyncio.TimeoutError:
                    pass
            self.used += pixels

    async def release(self, pixels: int) -> None:
        if pixels:
            changed = self._condition()
            async with changed:
                self.used -= pixels
                changed.notify_all()


@dataclass
class RequestMedia:
    """One request's images so far: their pixels and bytes against its caps, and the
    pixels it holds of the server's budget until it is answered."""

    budget: MediaBudget
    max_bytes: int
    pixels: int = 0
    bytes: int = 0
    held: int = 0

    async def charge(self, pixels: int, num_bytes: int) -> None:
        """Count an image in (``ValueError`` past this request's caps), then take its
        pixels from the server's budget (waiting, or 429)."""
        self.pixels += pixels
        self.bytes += num_bytes
        if self.pixels > self.budget.per_request:
            raise ValueError(f"This request's images add up to more than the "
                             f"{self.budget.per_request} pixels one request may hold "
                             "(--max-mm-pixels-per-request); send fewer or smaller images.")
        if self.bytes > self.max_bytes:
            raise ValueError(f"This request's images add up to more than {self.max_bytes} "
                             "bytes (--max-request-body-bytes); send fewer or smaller images.")
        await self.budget.acquire(pixels)
        self.held += pixels

    async def release(self) -> None:
        held, self.held = self.held, 0
        await self.budget.release(held)


# The images of the request being answered (set by the guard, charged where they are read).
request_media: ContextVar[RequestMedia | None] = ContextVar("request_media", default=None)


# Liveness still answers while the server drains: the process is alive and finishing
# its requests, and a liveness probe that failed then would kill it mid-drain. Readiness
# (/health) and new work get 503.
LIVENESS_PATHS = frozenset({"/ping"})


class RequestGuardMiddleware:
    """Body cap, per-request timeout, cancel-on-disconnect and drain for every HTTP request.

    A plain ASGI middleware, like the metrics one: it adds two small tasks
    per request, not a thread or a buffered copy of the response.
    """

    def __init__(self, app: ASGIApp, context: ServerContext, log_inputs: bool = False) -> None:
        self.app = app
        self.context = context
        self.log_inputs = log_inputs

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.context.draining and scope["path"] not in LIVENESS_PATHS:
            await _refuse(scope, receive, send, 503, "The server is shutting down.")
            return
        cap = self.context.limits.max_request_body_bytes
        declared = _content_length(scope)
        if declared == -1:
            await _refuse(scope, receive, send, 400, "The Content-Length header is not a "
                                                     "non-negative integer.")
            return
        if declared is not None and declared > cap:
            await _refuse(scope, receive, send, 413, _too_large(cap))
            return
        limits = self.context.limits
        try:
            body = await asyncio.wait_for(_read_body(receive, cap),
                                          limits.request_body_timeout_s)
        except asyncio.TimeoutError:
            await _refuse(scope, receive, send, 408,
                          f"The request body did not arrive within "
                          f"{limits.request_body_timeout_s:g} s.")
            return
        if body is None:  # the client left while sending
            return
        if isinstance(body, int):
            await _refuse(scope, receive, send, 413, _too_large(cap))
            return
        if too_many_json_containers(body, limits.max_json_containers):
            await _refuse(scope, receive, send, 400,
                          f"The request body has more than {limits.max_json_containers} JSON "
                          "arrays and objects. Send fewer inputs per request.")
            return
        if self.log_inputs:
            logger.info("%s %s body: %s", scope["method"], scope["path"],
                        body[:_LOGGED_BODY_CHARS].decode("utf-8", errors="replace"))
        client_request_id.set(_request_id(scope))  # seen by the route's task, made below
        media = RequestMedia(self.context.media_budget, limits.max_request_body_bytes)
        request_media.set(media)
        try:
            await self._run_guarded(scope, body, receive, send)
        finally:
            await media.release()

    async def _run_guarded(self, scope: Scope, body: bytes, receive: Receive,
                           send: Send) -> None:
        disconnected = asyncio.Event()
        body_sent = False
        response_started = False

        async def replay_body() -> Message:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await disconnected.wait()
            return {"type": "http.disconnect"}

        async def send_tracked(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        route = asyncio.ensure_future(self.app(scope, replay_body, send_tracked))
        watcher = asyncio.ensure_future(_wait_for_disconnect(receive))
        timeout = self.context.limits.request_timeout_s
        try:
            done, _ = await asyncio.wait({route, watcher}, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the server itself gave up on this request
            route.cancel()
            watcher.cancel()
            raise
        if route in done:
            watcher.cancel()
            route.result()  # an error goes on to the 500 handler
            return
        # Client gone or too late: cancelling the route makes the engine drop its queued work.
        route.cancel()
        disconnected.set()
        await asyncio.gather(route, return_exceptions=True)
        if watcher in done:
            return
        watcher.cancel()
        if not response_started:
            await error_response(
                504, f"The request did not finish within {timeout:g} s; its queued work was "
                     "dropped. Send fewer or shorter inputs per request, or retry later.",
            )(scope, replay_body, send)


def too_many_json_containers(body: bytes, cap: int) -> bool:
    """Whether ``body`` holds more than ``cap`` JSON arrays and objects. Counting
    brackets is a byte scan; only when text in strings could explain the count are the
    strings taken out and the brackets counted again."""
    if body.count(b"[") + body.count(b"{") <= cap:
        return False
    # Escaped backslashes, then escaped quotes, out of the way: every quote left opens or
    # closes a string, so the pieces between them alternate structure and text.
    pieces = body.replace(b"\\\\", b"").replace(b'\\"', b"").split(b'"')
    return sum(p.count(b"[") + p.count(b"{") for p in pieces[::2]) > cap


def _content_length(scope: Scope) -> int | None:
    """The declared body size; None when not declared, -1 when not a valid number."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else -1
    return None


async def _read_body(receive: Receive, cap: int) -> bytes | int | None:
    """The whole body; its size so far (an int) once it passes ``cap``; None on disconnect."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > cap:
            return size
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _wait_for_disconnect(receive: Receive) -> None:
    # Once the body is read, the server's receive() only returns when the client goes.
    while (await receive())["type"] != "http.disconnect":
        pass


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, message: str) -> None:
    # Connection: close, as the rest of the body (if any) is left unread.
    await error_response(status, message, {"Connection": "close"})(scope, receive, send)


def _too_large(cap: int) -> str:
    return (f"The request body is larger than this server's limit of {cap} bytes. "
            "Send fewer inputs per request.")
