"""HTTP routes, grouped by what they return."""

from cenote.server.routes import cohere, pooling, scoring, sparse, utility

ROUTERS = (pooling.router, sparse.router, scoring.router, cohere.router, utility.router)
