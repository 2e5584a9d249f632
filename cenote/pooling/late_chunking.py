"""Late chunking: a long text runs through the model whole, then its contextual token
vectors are averaged over fixed-size chunks of tokens, one vector per chunk (vLLM's
``LateChunkingParams``). Each chunk's vector so knows the whole text, not only its own
tokens. Here: the chunk means, and where each chunk lies in the text."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cenote.exceptions import VLLMValidationError
from cenote.outputs import LateChunk, LateChunkingMetadata


def mean_pool_chunks(rows: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """``[num_tokens, dim]`` -> ``[ceil(num_tokens / chunk_size), dim]``: the mean of each
    run of ``chunk_size`` rows (the last run as long as what is left), in float32."""
    size = min(chunk_size, len(rows))
    full, rest = divmod(len(rows), size)
    means = rows[:full * size].reshape(full, size, -1).mean(1, dtype=torch.float32)
    if not rest:
        return means
    return torch.cat([means, rows[full * size:].mean(0, keepdim=True, dtype=torch.float32)])


def chunk_metadata(text: str, offsets: Sequence[tuple[int, int]],
                   chunk_size: int) -> LateChunkingMetadata:
    """The chunks of a text of ``len(offsets)`` tokens: each one's token range, and the
    span of ``text`` its tokens cover (``offsets``: each token's character span in
    ``text``, empty for special tokens). ``VLLMValidationError`` when the offsets do not
    map the tokens onto the text, in order."""
    if not offsets:
        raise VLLMValidationError("Late chunking requires a fast tokenizer with offsets "
                                  "aligned to all input tokens")
    previous_start = previous_end = 0
    for start, end in offsets:
        if not 0 <= start <= end <= len(text):
            raise VLLMValidationError("Token offsets are not aligned to the input text")
        if start < end:
            if start < previous_start or end < previous_end:
                raise VLLMValidationError("Token offsets are not in source-text order")
            previous_start, previous_end = start, end
    chunks = []
    for first in range(0, len(offsets), chunk_size):
        last = min(first + chunk_size, len(offsets))
        spans = [(a, b) for a, b in offsets[first:last] if a < b]
        chars = (min(a for a, _ in spans), max(b for _, b in spans)) if spans else None
        chunks.append(LateChunk(token_range=(first, last), char_range=chars))
    return LateChunkingMetadata(chunk_size=chunk_size, input_tokens=len(offsets),
                                chunks=chunks)
