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
