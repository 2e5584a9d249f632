"""Compact embeddings: int8/uint8 codes and packed sign bits (Cohere's
``embedding_types``; the same arithmetic as Sentence-Transformers'
``quantize_embeddings``).

int8 and uint8 map each dimension through a fixed range, computed once per model
(and output dimension) from the embeddings of a shipped calibration text, so a text
always gets the same codes whatever it is batched with. binary and ubinary keep
one sign bit per dimension, 8 per byte.
"""

from __future__ import annotations

import base64
from importlib import resources

import numpy as np

EMBEDDING_TYPES = ("float", "int8", "uint8", "binary", "ubinary", "base64")


def calibration_texts() -> list[str]:
    """The texts int8/uint8 ranges are computed from: queries and passages on many
    topics, in several languages."""
    text = resources.files("cenote.data").joinpath("calibration.txt").read_text("utf-8")
    return [line for line in text.splitlines() if line.strip()]


def calibration_ranges(vectors: np.ndarray) -> np.ndarray:
    """``[2, dim]``: each dimension's minimum and maximum over the calibration vectors."""
    return np.stack([vectors.min(axis=0), vectors.max(axis=0)]).astype(np.float32)


def check_embedding_types(types: list[str]) -> None:
    unknown = [t for t in types if t not in EMBEDDING_TYPES]
    if unknown:
        raise ValueError(f"Unknown embedding type {unknown[0]!r}; choose from "
                         f"{', '.join(EMBEDDING_TYPES)}.")
    if not types:
        raise ValueError("embedding_types must not be empty.")


def compact(vectors: np.ndarray, kind: str, ranges: np.ndarray | None = None
            ) -> np.ndarray | list[str]:
    """``vectors`` ``[n, dim]`` (float32) as ``kind``: float32 as they are, int8/uint8
    codes (``ranges`` needed), binary/ubinary packed sign bits, or base64 strings of
    the little-endian float32 bytes."""
    if kind == "float":
        return vectors
    if kind == "base64":
        data = np.ascontiguousarray(vectors, dtype="<f4")
        return [base64.b64encode(row.tobytes()).decode("ascii") for row in data]
    if kind in ("binary", "ubinary"):
        bits = np.packbits(vectors > 0, axis=-1)
        return (bits.astype(np.int16) - 128).astype(np.int8) if kind == "binary" else bits
    if kind in ("int8", "uint8"):
        if ranges is None:
            raise ValueError(f"{kind} needs calibration ranges.")
        starts, steps = ranges[0], (ranges[1] - ranges[0]) / 255
        steps = np.where(steps > 0, steps, 1.0)  # a constant dimension maps to its start
        # Clipped: a text outside the calibrated range gets the end code, never a wrap.
        codes = np.clip((vectors - starts) / steps, 0, 255)
        return (codes - 128).astype(np.int8) if kind == "int8" else codes.astype(np.uint8)
    raise ValueError(f"Unknown embedding type {kind!r}; choose from {', '.join(EMBEDDING_TYPES)}.")
