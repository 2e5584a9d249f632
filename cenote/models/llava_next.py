"""LLaVA-NeXT converted to an embedder (e5-v; the example of a generic
``*ForConditionalGeneration`` conversion): transformers' ``LlavaNextModel`` (its CLIP
tower, anyres image features and language model), padded per batch; its final hidden
states pooled by the pooler (LAST, normalised, as vLLM pools e5-v)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import torch
from torch.nn import functional as F

from cenote.models.batch import PackedBatch
from cenote.models.interface import PoolingModel

# The checkpoint's names (transformers 5 saves the legacy layout: language_model.model.*)
# as LlavaNextModel's modules; the LM head is not used.
_RENAMES = ((re.compile(r"^model\."), ""),
            (re.compile(r"^language_model\.model\."), "language_model."),
            (re.compile(r"^vision_tower\.vision_model\."), "vision_tower."))
_UNUSED = re.compile(r"^(model\.)?(language_model\.)?lm_head\.")


class LlavaNextEmbedder(PoolingModel):
    """``LlavaNextForConditionalGeneration`` as a pooling model: every token's final
    hidden state, a batch's images (``batch.multimodal``) in their ``<image>`` rows."""

    def __init__(self, config: Any, task: str) -> None:
        super().__init__()
        if task != "embed":
            raise ValueError(f"LlavaNextForConditionalGeneration runs here as an embedder; "
                             f"task {task!r} does not apply to it.")
        from transformers import LlavaNextModel

        self.llava = LlavaNextModel(config).eval()
        self.pad_token_id = config.text_config.pad_token_id or 0

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        ids = batch.to_padded(batch.input_ids.unsqueeze(1)).squeeze(-1)
        lens = torch.tensor(batch.seq_lens, device=ids.device)
        mask = (torch.arange(ids.shape[1], device=ids.device)[None, :] < lens[:, None]).long()
        ids = ids.masked_fill(mask == 0, self.pad_token_id)
        records = [r for r in batch.multimodal or () if r is not None
                   and r.pixel_values is not None]
        kwargs = {}
        if records:  # images of different crops counts: padded to the most, as the processor
            most = max(r.pixel_values.shape[1] for r in records)
            kwargs["pixel_values"] = torch.cat([F.pad(r.pixel_values, (
                0, 0, 0, 0, 0, 0, 0, most - r.pixel_values.shape[1])) for r in records])
            kwargs["image_sizes"] = torch.cat([r.image_sizes for r in records])
            weight = self.llava.vision_tower.embeddings.patch_embedding.weight
            kwargs["pixel_values"] = kwargs["pixel_values"].to(weight.dtype)
        out = self.llava(input_ids=ids, attention_mask=mask, **kwargs)
        return batch.from_padded(out.last_hidden_state)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        state = {}
        for name, tensor in weights:
            if _UNUSED.match(name):
                continue
            for pattern, replacement in _RENAMES:
                name = pattern.sub(replacement, name)
            state[name] = tensor
        self.llava.load_state_dict(state, strict=True)
