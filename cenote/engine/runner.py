"""Running one scheduled batch: packed tensors -> model -> pooler -> CPU tensors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from cenote.config import ModelConfig, PoolingType
from cenote.models import load_model
from cenote.models.layers import Linear, PackedBatch
from cenote.params import PoolingParams
from cenote.pooling import PoolingMetadata

_POOLED_TOKEN = {PoolingType.CLS: "first", PoolingType.LAST: "last"}


@dataclass
class SequenceInput:
    """One tokenised prompt with its resolved pooling parameters."""

    token_ids: list[int]
    token_type_ids: list[int] | None
    params: PoolingParams


class ModelRunner:
    """Owns the model and its pooler; runs batches of one pooling task."""

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.model, self.pooler = load_model(config)
        # Packed oneDNN matmuls cache a kernel per row count: give them few row counts.
        self.bucket_rows = any(isinstance(m, Linear) and m.packed is not None
                               for m in self.model.modules())
        self.prunes_last_layer = getattr(self.model, "computes_pooled_rows_only", False)
        self.classify_pad_token_id = getattr(self.model, "classify_pad_token_id", None)

    @torch.inference_mode()
    def execute(self, seqs: Sequence[SequenceInput], pooling_task: str) -> list[torch.Tensor]:
        types = None
        if any(s.token_type_ids is not None for s in seqs):
            types = [s.token_type_ids or [0] * len(s.token_ids) for s in seqs]
        pooling_type = self.pooler.task_poolers[pooling_task].pooling_type
        token_ids = [s.token_ids for s in seqs]
        if self.classify_pad_token_id is not None and pooling_type is PoolingType.LAST:
            token_ids = [before_trailing(ids, self.classify_pad_token_id) for ids in token_ids]
        # A pooler that keeps one token per sequence needs only that row of the last layer.
        pooled = _POOLED_TOKEN.get(pooling_type) if self.prunes_last_layer else None
        batch = PackedBatch.build(token_ids, types, self.config.device,
                                  bucket=self.bucket_rows, pooled=pooled)
        if pooled is None:
            tokens = batch.num_tokens
            hidden = self.model(batch)[:tokens]
            meta = PoolingMetadata(batch.seq_lens, batch.cu_seqlens, batch.input_ids[:tokens])
        else:  # row b is sequence b's pooled token: hand the pooler one-token sequences
            count = batch.num_seqs
            hidden = self.model(batch)[:count]
            meta = PoolingMetadata([1] * count, torch.arange(count + 1, device=hidden.device),
                                   batch.input_ids[batch.pooled_rows[:count]])
        outputs = self.pooler(hidden, meta, pooling_task, [s.params for s in seqs])
        return outputs_to_cpu(outputs)


def before_trailing(token_ids: list[int], pad_token_id: int) -> list[int]:
    """``token_ids`` up to the last token that is not ``pad_token_id`` (the first token
    if all are). A causal model's row there does not depend on the tokens after it, so
    pooling the last row of this prefix is what transformers' decoder classifiers
    score, with less work."""
    end = len(token_ids)
    while end > 1 and token_ids[end - 1] == pad_token_id:
        end -= 1
    return token_ids if end == len(token_ids) else token_ids[:end]


def outputs_to_cpu(outputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The batch's outputs on the CPU, in one device-to-host copy (one per output
    would wait for the device once per sequence)."""
    if not outputs or all(out.device.type == "cpu" for out in outputs):
        return list(outputs)
    if len({out.dtype for out in outputs}) > 1:
        return [out.cpu() for out in outputs]
    flat = torch.cat([out.reshape(-1) for out in outputs]).cpu()
    return [part.view(out.shape)
            for part, out in zip(flat.split([out.numel() for out in outputs]), outputs,
                                 strict=True)]
