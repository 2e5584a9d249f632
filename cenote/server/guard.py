"""What happens around every request: body cap, deadline, disconnects, draining.

:class:`RequestGuardMiddleware` reads the whole body itself, so it can refuse
an oversized one early (413, from ``Content-Length`` or by counting a chunked
body as it streams in). It then runs the route in a task of its own and
watches the connection meanwhile: when the client goes away, or the request
outlives ``--request-timeout`` (504), the route is cancelled, and the engine
drops that request's sequences that have not run yet. While the server drains
on SIGTERM, new requests get 503.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cenote.server.context import ServerContext
from cenote.server.errors import error_response
from cenote.server.protocol_base import client_request_id

logger = logging.getLogger(__name__)

# With --log-inputs, this much of each body is logged.
_LOGGED_BODY_CHARS = 4096


def _request_id(scope: Scope) -> str | None:
    """The X-Request-Id header, if it is printable ASCII of at most 256 characters."""
    value = next((v for k, v in scope["headers"] if k == b"x-request-id"), None)
    if not value or len(value) > 256 or not all(32 <= c < 127 for c in value):
        return None
    return value.decode("ascii")


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
        if self.context.draining:
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
        body = await _read_body(receive, cap)
        if body is None:  # the client left while sending
            return
        if isinstance(body, int):
            await _refuse(scope, receive, send, 413, _too_large(cap))
            return
        if self.log_inputs:
            logger.info("%s %s body: %s", scope["method"], scope["path"],
                        body[:_LOGGED_BODY_CHARS].decode("utf-8", errors="replace"))
        client_request_id.set(_request_id(scope))  # seen by the route's task, made below
        await self._run_guarded(scope, body, receive, send)

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
