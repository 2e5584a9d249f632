"""HTTP routes, grouped by what they return."""

from cenote.server.routes import cohere, invocations, lora, pooling, scoring, tei, utility

# tei first: its POST /rerank hands vLLM/Cohere bodies on to scoring's.
ROUTERS = (tei.router, pooling.router, scoring.router, cohere.router, utility.router,
           invocations.router, lora.router)
