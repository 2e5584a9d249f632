"""Chunked processing of long inputs (vLLM's ``enable_chunked_processing``).

An input longer than ``max_model_len`` runs as consecutive chunks of at most
``max_model_len`` tokens, each an ordinary batch member (a long document joins the
token budget chunk by chunk, as anyone's input does, and never blocks other
clients). Each chunk is pooled without normalisation; an input's embedding is the
mean of its chunks' poolings weighted by their token counts, then cut to its
``dimensions`` and normalised as its parameters ask.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import torch
import torch.nn.functional as F

from cenote.inputs.prompts import SequenceInput

# Turns the outputs of the records run into one output per input.
Merge = Callable[[Sequence[torch.Tensor]], list[torch.Tensor]]


def split_into_chunks(seqs: Sequence[SequenceInput], max_len: int
                      ) -> tuple[list[SequenceInput], Merge]:
    """The records to run for ``seqs`` and the function that turns their outputs (in
    the same order) back into one output per input. Inputs within ``max_len`` run as
    they are; only longer ones are split."""
    if all(s.cost <= max_len or s.pixel_values is not None for s in seqs):
        return list(seqs), list
    records: list[SequenceInput] = []
    spans: list[tuple[int, int] | None] = []  # the records of each split input
    for seq in seqs:
        if seq.cost <= max_len or seq.pixel_values is not None:  # an image is one record
            spans.append(None)
            records.append(seq)
            continue
        # Pooled raw: cutting and normalising apply to the weighted mean, once.
        raw = replace(seq.params, normalize=False, dimensions=None)
        start = len(records)
        for begin in range(0, seq.cost, max_len):
            types = seq.token_type_ids
            records.append(SequenceInput(
                seq.token_ids[begin:begin + max_len],
                types[begin:begin + max_len] if types is not None else None, raw,
                pool_skip=max(0, seq.pool_skip - begin), lora_id=seq.lora_id))
        spans.append((start, len(records)))

    def merge(outputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        merged, k = [], 0
        for seq, span in zip(seqs, spans, strict=True):
            if span is None:
                merged.append(outputs[k])
                k += 1
                continue
            weights = torch.tensor([records[i].cost for i in range(*span)], dtype=torch.float32)
            stacked = torch.stack([outputs[i].float() for i in range(*span)])
            vector = (stacked * weights[:, None]).sum(0) / weights.sum()
            if seq.params.dimensions is not None:
                vector = vector[:seq.params.dimensions]
            if seq.params.normalize:
                vector = F.normalize(vector, p=2, dim=-1)
            merged.append(vector)
            k = span[1]
        return merged

    return records, merge
