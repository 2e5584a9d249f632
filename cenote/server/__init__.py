"""The OpenAI-compatible HTTP server: protocol, app, routes, errors, metrics."""

from cenote.server.app import build_app

__all__ = ["build_app"]
