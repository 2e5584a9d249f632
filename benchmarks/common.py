"""What the benchmark scripts share: the repository on ``sys.path`` (for ``cenote`` and
the test factories, whether or not the package is installed), their argument parser
(the script's docstring as its help), best-of timing and the vectors of ``LLM.embed``.

Scripts run as ``python benchmarks/<name>.py``, so this folder is already on the path
and ``from common import ...`` finds this module."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

T = TypeVar("T")


def script_parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser whose help is ``doc`` (the script's ``__doc__``) as written."""
    return argparse.ArgumentParser(description=doc,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def best_of(fn: Callable[[], T], repeats: int) -> tuple[float, T]:
    """Best wall time of ``repeats`` runs (after the caller's warm-up) and the last result."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, not {repeats}")
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def embedding_matrix(outputs: list[Any]) -> Any:
    """``[N, dim]`` float tensor of ``LLM.embed``'s outputs."""
    import torch

    return torch.tensor([o.outputs.embedding for o in outputs])


def qwen3_06b_shaped(target: Path, layers: int, **config: Any) -> Path:
    """A random Qwen3 checkpoint at Qwen3-0.6B's widths (hidden 1024, 16 query and 8
    key/value heads of 128, MLP 3072) with ``layers`` layers and MiniLM's tokenizer, at
    ``target``; ``config``: more fields (``is_causal=False``, ...)."""
    from cenote.config import default_model_path
    from tests.factories import build_tiny_decoder

    return build_tiny_decoder(
        default_model_path(), target, "qwen3", "Qwen3Model", hidden_size=1024,
        intermediate_size=3072, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
        num_hidden_layers=layers, max_position_embeddings=512, **config)


# EmbeddingGemma-300m's text model (its config.json): 24 layers of 768, MLP 1152, 3 query
# heads sharing 1 key/value head of 256, queries scaled by 256 ** -0.5, five sliding
# layers (window 512: 256 keys either side, bidirectional) to one full layer, local RoPE
# theta 1e4 and global 1e6, 2048 positions.
EMBEDDINGGEMMA_300M = dict(
    hidden_size=768, intermediate_size=1152, num_attention_heads=3, num_key_value_heads=1,
    head_dim=256, query_pre_attn_scalar=256, sliding_window=512,
    max_position_embeddings=2048, rms_norm_eps=1e-6, hidden_activation="gelu_pytorch_tanh",
    use_bidirectional_attention=True,
    rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                     "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}},
)


def embeddinggemma_shaped(target: Path, layers: int) -> Path:
    """A random bidirectional Gemma3 checkpoint at EmbeddingGemma-300m's widths
    (``EMBEDDINGGEMMA_300M``) with ``layers`` layers (every 6th full attention) and
    MiniLM's tokenizer and vocabulary, in the Sentence-Transformers layout EmbeddingGemma
    ships at ``target``: mean pooling, Dense 768 -> 3072 and 3072 -> 768 without bias or
    activation, Normalize, and its query/document prompts (none by default)."""
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import (
        Dense,
        Normalize,
        Pooling,
        Transformer,
    )

    from cenote.config import default_model_path

    minilm = default_model_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm)
    torch.manual_seed(0)
    config = transformers.Gemma3TextConfig(
        **EMBEDDINGGEMMA_300M, vocab_size=len(tokenizer), num_hidden_layers=layers,
        layer_types=["full_attention" if (i + 1) % 6 == 0 else "sliding_attention"
                     for i in range(layers)],
        pad_token_id=tokenizer.pad_token_id)
    body_path = target.with_name(target.name + "-body")
    transformers.Gemma3TextModel(config).save_pretrained(body_path)
    tokenizer.save_pretrained(body_path)
    SentenceTransformer(modules=[
        Transformer(str(body_path), max_seq_length=2048), Pooling(768, pooling_mode="mean"),
        Dense(768, 3072, bias=False, activation_function=torch.nn.Identity()),
        Dense(3072, 768, bias=False, activation_function=torch.nn.Identity()),
        Normalize()],
        prompts={"query": "task: search result | query: ", "document": "title: none | text: "},
        device="cpu").save(str(target))
    return target
