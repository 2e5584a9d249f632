"""One error shape for every failure: ``{"error": {"message", "type", "param", "code"}}``.

Exception handlers turn everything a request can raise (bad JSON, failed
validation, unknown routes, engine errors, bugs) into that shape, so no client
ever sees HTML, FastAPI's 422 layout or a stack trace. Every message passes
through :func:`client_message` on its way out: no object repr, memory address or
path of this machine's installation reaches a client, whatever raised it.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from cenote.engine.async_engine import BatchFailedError, EngineStoppedError, QueueFullError
from cenote.exceptions import VLLMValidationError
from cenote.server.protocol import ErrorInfo, ErrorResponse

logger = logging.getLogger(__name__)

# OpenAI-style error type names; other statuses derive theirs from the HTTP phrase.
_ERROR_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    404: "NotFoundError",
    413: "RequestTooLargeError",
    429: "RateLimitError",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
    504: "TimeoutError",
}
# Validation errors whose (short, string) input the message repeats: choices.
_ECHOED_ERROR_TYPES = frozenset({"literal_error", "enum"})
# How many validation problems one message lists; the rest are counted.
_MAX_LISTED_PROBLEMS = 3


# What must never reach a client: object reprs (``<_io.BytesIO object at 0x7f...>``, the
# first step of CVE-2026-22778), bare addresses, and this machine's own folders.
_OBJECT_REPR = re.compile(r"<[^<>]{0,200}? at 0x[0-9a-fA-F]+>")
_ADDRESS = re.compile(r"\b0x[0-9a-fA-F]{6,}\b")


def _private_folders() -> list[str]:
    folders = {sys.prefix, sys.base_prefix, sys.exec_prefix, tempfile.gettempdir(),
               os.path.expanduser("~"), os.path.dirname(os.path.dirname(__file__))}
    # Longest first, so /usr/lib/python3/... goes before /usr.
    return sorted((f for f in folders if f and f != os.sep), key=len, reverse=True)


_PRIVATE_PATH = re.compile(
    "(?:" + "|".join(re.escape(folder) for folder in _private_folders()) + r")[^\s'\"`,;)]*")


def client_message(message: str) -> str:
    """``message`` as it may be sent to a client: object reprs, memory addresses and
    paths inside this machine's Python, home, temporary or cenote folders are cut out."""
    message = _OBJECT_REPR.sub("<object>", message)
    message = _ADDRESS.sub("0x…", message)
    return _PRIVATE_PATH.sub("<path>", message)


class APIError(Exception):
    """An error with an HTTP status and a message meant for the client."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers
        self.param = param


class ModelNotFoundError(APIError):
    def __init__(self, name: str) -> None:
        # A lone surrogate (JSON's "\ud800") could not be written back as UTF-8.
        shown = name.encode("utf-8", "backslashreplace").decode("utf-8")
        super().__init__(404, f"The model `{shown}` does not exist.")


def error_type(status: int) -> str:
    if status in _ERROR_TYPES:
        return _ERROR_TYPES[status]
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        return "Error"
    return "".join(word.capitalize() for word in phrase.replace("-", " ").split()) + "Error"


def error_response(status: int, message: str, headers: dict[str, str] | None = None,
                   param: str | None = None, no_route: bool = False) -> Response:
    """The JSON error answer; the one place a message leaves for a client. ``no_route``:
    a route this server (or this model) does not have, which also carries FastAPI's own
    ``"detail": "Not Found"``, as vLLM's server answers it."""
    body = ErrorResponse(error=ErrorInfo(message=client_message(message),
                                         type=error_type(status), param=param, code=status))
    content = body.model_dump_json()
    if no_route:
        content = content[:-1] + ',"detail":"Not Found"}'
    return Response(content, status_code=status, headers=headers,
                    media_type="application/json")


def validation_message(exc: RequestValidationError) -> str:
    """A short, readable summary of what was wrong with the body (never echoing input),
    each problem with pydantic's error type as vLLM's messages carry it."""
    problems = []
    for error in exc.errors():
        loc = [str(part) for part in error.get("loc", ()) if part != "body"]
        if not loc and error.get("type") in ("model_attributes_type", "dict_type"):
            problems.append("The request body must be a JSON object, sent with "
                            "Content-Type: application/json.")
            continue
        if error.get("type") == "json_invalid":
            problems.append(f"The body is not valid JSON: {error.get('ctx', {}).get('error', '')}"
                            .rstrip(": "))
            continue
        where = ".".join(loc)
        problem = f"{where}: {error.get('msg')}" if where else str(error.get("msg"))
        kind = error.get("type")
        given = error.get("input")
        if kind in _ECHOED_ERROR_TYPES and isinstance(given, str) and len(given) <= 64:
            # A choice field's bad value is short and the client's own: name it, as vLLM.
            problems.append(f"{problem} [type={kind}, input_value={given!r}]")
        else:
            problems.append(f"{problem} [type={kind}]" if kind else problem)
    problems = list(dict.fromkeys(problems))
    message = "; ".join(problems[:_MAX_LISTED_PROBLEMS])
    if len(problems) > _MAX_LISTED_PROBLEMS:
        message += f" (and {len(problems) - _MAX_LISTED_PROBLEMS} more problems)"
    return message or "The request body is invalid."


def validation_param(exc: RequestValidationError) -> str | None:
    """The body field of the first problem (``input``, ``encoding_format``), if any."""
    for error in exc.errors():
        loc = [part for part in error.get("loc", ()) if part != "body"]
        if loc and isinstance(loc[0], str):
            return loc[0]
    return None


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that give every failure the SPEC's error shape."""

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> Response:
        return error_response(exc.status, exc.message, exc.headers, exc.param)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        return error_response(400, validation_message(exc), param=validation_param(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return error_response(exc.status_code, str(exc.detail), exc.headers,
                              no_route=exc.status_code == 404)

    # The engine reports a request it cannot serve (wrong task, too long, empty
    # text, out-of-vocabulary ids, bad parameters) as ValueError or TypeError.
    @app.exception_handler(ValueError)
    @app.exception_handler(TypeError)
    async def bad_request(request: Request, exc: Exception) -> Response:
        if isinstance(exc, VLLMValidationError):
            return error_response(400, exc.args[0] if exc.args else str(exc), param=exc.parameter)
        return error_response(400, str(exc))

    @app.exception_handler(EngineStoppedError)
    async def engine_stopped(request: Request, exc: EngineStoppedError) -> Response:
        # An engine process that died: its requests may come back once it is restarted.
        retry_after = getattr(exc, "retry_after_s", None)
        return error_response(503, str(exc),
                              {"Retry-After": str(retry_after)} if retry_after else None)

    @app.exception_handler(QueueFullError)
    async def queue_full(request: Request, exc: QueueFullError) -> Response:
        return error_response(429, str(exc), {"Retry-After": str(exc.retry_after_s)})

    @app.exception_handler(BatchFailedError)
    async def batch_failed(request: Request, exc: BatchFailedError) -> Response:
        return error_response(500, str(exc))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        logger.error("Unhandled error on %s %s", request.method, request.url.path,
                     exc_info=exc)
        return error_response(500, "Internal server error.")
