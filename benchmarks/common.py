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
