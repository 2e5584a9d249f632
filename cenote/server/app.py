"""The FastAPI application: routes, error handlers, auth, metrics, engine lifecycle."""

from __future__ import annotations

import hmac
import inspect
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from cenote.engine.async_engine import AsyncPoolingEngine
from cenote.server.context import ServedModel, ServerContext, ServerLimits
from cenote.server.errors import error_response, install_error_handlers
from cenote.server.guard import RequestGuardMiddleware
from cenote.server.media import MediaPolicy
from cenote.server.metrics import MetricsMiddleware, ServerMetrics
from cenote.server.routes import ROUTERS
from cenote.server.tracing import Tracing, TracingMiddleware
from cenote.version import __version__

logger = logging.getLogger(__name__)

# Load balancers and orchestrators probe these without credentials.
_PUBLIC_PATHS = frozenset({"/health", "/ping"})


class BearerAuthMiddleware:
    """With ``--api-key``, every route but ``/health`` (and ``/ping``) needs
    ``Authorization: Bearer KEY``."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.expected = api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in _PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        given = next((value for name, value in scope["headers"] if name == b"authorization"),
                     b"")
        # The scheme is case-insensitive (RFC 7235): "bearer KEY" is as good as "Bearer KEY".
        scheme, _, key = given.partition(b" ")
        # Constant-time comparison: response timing must not reveal the key.
        if not (hmac.compare_digest(key.strip(), self.expected)
                and scheme.lower() == b"bearer"):
            response = error_response(401, "Invalid or missing API key.",
                                      headers={"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


# A body sent without a Content-Type header is read as JSON, as FastAPI did before its
# strict_content_type option (and as vLLM's server does): `requests.post(url,
# data=json.dumps(...))` sends none. A non-JSON Content-Type is still refused.
_LENIENT_CONTENT_TYPE = ({"strict_content_type": False}
                         if "strict_content_type" in inspect.signature(FastAPI).parameters
                         else {})


def build_app(
    engine: AsyncPoolingEngine | Sequence[ServedModel],
    served_model_names: list[str] | None = None,
    api_key: str | None = None,
    limits: ServerLimits | None = None,
    allowed_origins: list[str] | None = None,
    log_inputs: bool = False,
    chat_template: str | None = None,
    trust_request_chat_template: bool = False,
    media: MediaPolicy | None = None,
    tracing: Tracing | None = None,
) -> FastAPI:
    """The cenote HTTP app around ``engine`` (served as ``served_model_names``), or
    around several models, each a :class:`ServedModel` (its names and its engine).

    The app's lifespan starts the engines' workers (and warms the models up) and
    shuts them down when the server stops. ``limits`` bound what one request may
    ask; CORS headers are sent only for ``allowed_origins``; request bodies
    are logged only with ``log_inputs``; with ``tracing``, each POST request is traced.
    """
    if isinstance(engine, AsyncPoolingEngine):
        models = [ServedModel(list(served_model_names or [engine.config.model]), engine)]
    else:
        models = list(engine)
    _check_names(models)
    engines = [model.engine for model in models]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            for each in engines:
                each.start()
                await each.warmup()
            yield
        finally:
            for each in engines:
                each.shutdown()
            if tracing is not None:
                tracing.shutdown()

    app = FastAPI(title="cenote", version=__version__, lifespan=lifespan,
                  description="OpenAI-compatible server for pooling models.",
                  **_LENIENT_CONTENT_TYPE)
    metrics = ServerMetrics(models)
    context = ServerContext(models, metrics, limits or ServerLimits(),
                            chat_template=chat_template,
                            trust_request_chat_template=trust_request_chat_template,
                            media=media or MediaPolicy())
    app.state.context = context
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    # The middleware added last runs first: metrics (counts everything) > CORS (answers
    # preflights, which carry no key) > auth (refuses before a body is read) > guard.
    app.add_middleware(RequestGuardMiddleware, context=context, log_inputs=log_inputs)
    if api_key:
        app.add_middleware(BearerAuthMiddleware, api_key=api_key)
    if allowed_origins:
        app.add_middleware(CORSMiddleware, allow_origins=allowed_origins,
                           allow_methods=["GET", "POST"], allow_headers=["*"])
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    if tracing is not None:  # outermost: its span covers everything the request went through
        app.add_middleware(TracingMiddleware, tracing=tracing)
    return app


def _check_names(models: list[ServedModel]) -> None:
    if not models or any(not model.names for model in models):
        raise ValueError("Every served model needs a name.")
    names = [name for model in models for name in model.names]
    if len(set(names)) != len(names):
        twice = sorted({name for name in names if names.count(name) > 1})
        raise ValueError(f"Served model names must differ; given more than once: "
                         f"{', '.join(twice)}.")


def begin_draining(app: FastAPI) -> None:
    """Answer new requests with 503 (and /health with 503) while those in flight finish."""
    app.state.context.draining = True
