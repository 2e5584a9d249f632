"""jina-embeddings-v5 (architecture ``JinaEmbeddingsV5Model``, as vLLM registers it): its
-small variant is a Qwen3 decoder, run by cenote's native decoder (last-token pooling,
normalised); its -nano variant is a bidirectional EuroBERT encoder, which no native
family fits, refused by name rather than run through the wrong body."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cenote.config.hf import architecture_of
from cenote.config.hub import read_json

JINA_V5_ARCHITECTURE = "JinaEmbeddingsV5Model"


def check_jina_embeddings_v5(hf_config: Any, path: Path) -> None:
    """ValueError for a ``JinaEmbeddingsV5Model`` checkpoint that is not the Qwen3
    decoder: the EuroBERT variant (``is_decoder: false`` in config.json) or any other
    ``model_type``."""
    if architecture_of(hf_config) != JINA_V5_ARCHITECTURE:
        return
    model_type = getattr(hf_config, "model_type", "")
    is_decoder = read_json(Path(path) / "config.json").get("is_decoder")
    if is_decoder is False:
        raise ValueError(f"{JINA_V5_ARCHITECTURE} with is_decoder: false (jina-embeddings-v5's "
                         f"EuroBERT variant, model_type {model_type!r}) is a bidirectional "
                         "EuroBERT encoder; cenote runs no EuroBERT natively, so only the Qwen3 "
                         "variant (jina-embeddings-v5-text-small) is served.")
    if model_type != "qwen3":
        raise ValueError(f"{JINA_V5_ARCHITECTURE} is served as a Qwen3 decoder; this config's "
                         f"model_type is {model_type!r}, not 'qwen3'.")
