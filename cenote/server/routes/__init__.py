"""HTTP routes, grouped by what they return."""

from cenote.server.routes import pooling, scoring, utility

ROUTERS = (pooling.router, scoring.router, utility.router)
