"""HTTP routes, grouped by what they return."""

from cenote.server.routes import cohere, pooling, scoring, utility

ROUTERS = (pooling.router, scoring.router, cohere.router, utility.router)
