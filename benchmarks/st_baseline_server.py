"""The baseline people build today: FastAPI + sentence-transformers ``encode`` per request.

A plain synchronous endpoint (FastAPI runs it on its thread pool), the model
loaded once, one ``encode`` call per HTTP request, answering the OpenAI
embeddings shape. This is what ``serve_load.py`` measures cenote against.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/st_baseline_server.py MODEL_DIR --port 8001
"""

from __future__ import annotations

import argparse
import base64

import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel


class EmbeddingRequest(BaseModel):
    input: str | list[str]
    model: str | None = None
    encoding_format: str = "float"


def build_app(model_dir: str) -> FastAPI:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_dir, device="cpu")
    app = FastAPI()

    @app.get("/health")
    def health() -> dict:
        return {}

    @app.post("/v1/embeddings")
    def embeddings(body: EmbeddingRequest) -> dict:
        texts = [body.input] if isinstance(body.input, str) else body.input
        vectors = model.encode(texts, convert_to_numpy=True)
        if body.encoding_format == "base64":
            data = [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in vectors]
        else:
            data = vectors.tolist()
        return {"object": "list", "model": body.model or model_dir,
                "data": [{"object": "embedding", "index": i, "embedding": e}
                         for i, e in enumerate(data)]}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", help="model folder")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    uvicorn.run(build_app(args.model), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
