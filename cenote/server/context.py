"""What every route needs: the engine, the served model names and the metrics."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from cenote.engine.async_engine import AsyncPoolingEngine
from cenote.server.errors import ModelNotFoundError
from cenote.server.metrics import ServerMetrics


@dataclass
class ServerContext:
    engine: AsyncPoolingEngine
    served_model_names: list[str]
    metrics: ServerMetrics

    def model_name(self, requested: str | None) -> str:
        """The name to answer with; an unknown ``model`` is a 404 (OpenAI's behaviour)."""
        if requested is None:
            return self.served_model_names[0]
        if requested not in self.served_model_names:
            raise ModelNotFoundError(requested)
        return requested


def get_context(request: Request) -> ServerContext:
    """FastAPI dependency: the app's :class:`ServerContext`."""
    return request.app.state.context
