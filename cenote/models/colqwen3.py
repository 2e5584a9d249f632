"""ColQwen3 (colpali-engine's ``ColQwen3``): a Qwen3-VL model whose last hidden state of
every token goes through ``custom_text_proj`` (``Linear(hidden, 320)``) and is normalised
(the pooler normalises ``token_embed`` rows): one vector per token or image patch, scored
by MaxSim.

Unlike transformers' ``ColQwen2ForRetrieval``, colpali-engine's class *is* a
``Qwen3VLModel`` and calls it with ``input_ids``, ``pixel_values`` and ``image_grid_thw``:
its language model runs with Qwen3-VL's interleaved multimodal positions and DeepStack,
so cenote runs :class:`~cenote.models.qwen2_vl.Qwen3VLEmbedder` unchanged and adds the
projection. The checkpoint is a ``Qwen3VLConfig`` declaring ``architectures: ["ColQwen3"]``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from cenote.models.batch import PackedBatch
from cenote.models.qwen2_vl import Qwen3VLEmbedder

# colpali-engine's ``ColQwen3._checkpoint_conversion_mapping`` (first match wins), then the
# names Qwen2VLEmbedder.load_weights reads (``visual.*``, ``model.language_model.*``).
_RENAMES = ((re.compile(r"^base_model\.model\.custom_text_proj\."), "custom_text_proj."),
            (re.compile(r"^model\.visual\."), "visual."),
            (re.compile(r"^model\.language_model\."), "language_model."),
            (re.compile(r"^model\."), ""))
_PROJECTION_DIM = 320  # colpali-engine's ColQwen3.dim


class ColQwen3Embedder(Qwen3VLEmbedder):
    """``ColQwen3``: the projected last hidden state of every token."""

    computes_pooled_rows_only = False

    def __init__(self, config: Any, task: str) -> None:
        if task != "embed":
            raise ValueError(f"ColQwen3 is a retrieval embedder (token_embed); task {task!r} "
                             "does not apply to it.")
        super().__init__(config, task)
        self.custom_text_proj = nn.Linear(config.text_config.hidden_size, _PROJECTION_DIM)

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        return self.custom_text_proj(super().forward(batch))

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """``custom_text_proj.*`` here; ``visual.*`` / ``language_model.*`` (or the
        ``model.``-prefixed names colpali-engine's mapping accepts) to Qwen3-VL's loader."""
        projection: dict[str, torch.Tensor] = {}

        def backbone() -> Iterable[tuple[str, torch.Tensor]]:
            for name, tensor in weights:
                name = _rename(name)
                if name.startswith("custom_text_proj."):
                    projection[name.removeprefix("custom_text_proj.")] = tensor
                elif name.startswith("lm_head."):
                    continue
                elif name.startswith("language_model."):
                    yield "model." + name, tensor
                else:
                    yield name, tensor

        super().load_weights(backbone())
        self.custom_text_proj.load_state_dict(projection, strict=True)


def _rename(name: str) -> str:
    for pattern, replacement in _RENAMES:
        if pattern.match(name):
            return pattern.sub(replacement, name)
    return name
