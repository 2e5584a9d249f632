"""Visual document retrievers (ColQwen2, and ColQwen2.5: the same class with a Qwen2.5-VL
``vlm_config``): one vector per token or image patch, scored against each other by MaxSim.

``ColQwen2ForRetrieval`` (transformers' class) is a Qwen2-VL model whose last hidden
states go through ``embedding_proj_layer`` and are normalised (the pooler normalises
``token_embed`` rows). The vision tower is transformers' own, the language model
cenote's packed decoder (:class:`~cenote.models.qwen2_vl.Qwen2VLEmbedder`), the tower
the one of the ``vlm_config``'s family (Qwen2-VL's or Qwen2.5-VL's).

Positions: transformers' ``ColQwen2ForRetrieval.forward`` hands the VLM only
``inputs_embeds`` (no ``image_grid_thw``), so its language model numbers every token
1-D, vision tokens included, with no multimodal rotary positions; cenote does the same,
for parity with that class.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from cenote.models.batch import PackedBatch
from cenote.models.interface import PoolingModel
from cenote.models.qwen2_vl import Qwen2_5_VLEmbedder, Qwen2VLEmbedder

# transformers 5 saves ``vlm.visual.*`` / ``vlm.language_model.*``; older conversions
# ``vlm.model.visual.*`` / ``vlm.model.language_model.*`` (and an unused ``vlm.lm_head``).
_VLM_PREFIX = re.compile(r"^vlm\.(model\.)?")
# The vision tower of each backbone ColQwen2ForRetrieval's vlm_config may name.
_TOWERS = {"qwen2_vl": Qwen2VLEmbedder.vision_tower,
           "qwen2_5_vl": Qwen2_5_VLEmbedder.vision_tower}


class ColQwen2Embedder(Qwen2VLEmbedder):
    """``ColQwen2ForRetrieval``: the projected last hidden state of every token."""

    computes_pooled_rows_only = False

    def __init__(self, config: Any, task: str) -> None:
        if task != "embed":
            raise ValueError(f"ColQwen2ForRetrieval is a retrieval embedder (token_embed); "
                             f"task {task!r} does not apply to it.")
        backbone = config.vlm_config.model_type
        if backbone not in _TOWERS:
            raise ValueError(f"ColQwen2ForRetrieval with a {backbone!r} backbone is not "
                             f"supported; supported: {', '.join(sorted(_TOWERS))}.")
        self.vision_tower = _TOWERS[backbone]  # read by Qwen2VLEmbedder.__init__
        super().__init__(config.vlm_config, task)
        hidden = config.vlm_config.text_config.hidden_size
        self.embedding_proj_layer = nn.Linear(hidden, config.embedding_dim)

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        x = self.language.embed_tokens(batch.input_ids)
        found = [(r.pixel_values, r.image_grid_thw) for r in batch.multimodal or ()
                 if r is not None and r.pixel_values is not None]
        if found:
            weight = self.visual.patch_embed.proj.weight
            features = self.visual(torch.cat([p for p, _ in found]).to(weight.dtype),
                                   grid_thw=torch.cat([g for _, g in found])).pooler_output
            rows = (batch.input_ids[:batch.num_tokens] == self.image_token_id).nonzero()
            if len(rows) != len(features):
                raise ValueError(f"{len(rows)} image placeholder tokens for "
                                 f"{len(features)} vision tokens.")
            x = x.index_copy(0, rows.squeeze(1), features.to(x.dtype))
        hidden = self.language(batch, inputs_embeds=x)
        return self.embedding_proj_layer(hidden)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """``embedding_proj_layer.*`` here, the VLM's tensors (``vlm.*``) as a Qwen2-VL
        checkpoint names them for :meth:`Qwen2VLEmbedder.load_weights`."""
        projection: dict[str, torch.Tensor] = {}

        def backbone() -> Iterable[tuple[str, torch.Tensor]]:
            for name, tensor in weights:
                if name.startswith("embedding_proj_layer."):
                    projection[name.removeprefix("embedding_proj_layer.")] = tensor
                elif name.startswith("vlm.lm_head."):
                    continue
                else:
                    yield "model." + _VLM_PREFIX.sub("", name), tensor

        super().load_weights(backbone())
        self.embedding_proj_layer.load_state_dict(projection, strict=True)


# transformers 5 saves PaliGemma in its legacy layout (``vlm.language_model.model.*``) and
# its modules are ``vlm.language_model.*``; newer saves name them ``vlm.model.*``.
_PALIGEMMA_RENAMES = ((re.compile(r"^vlm\.model\."), "vlm."),
                      (re.compile(r"^vlm\.language_model\.model\."), "vlm.language_model."),
                      (re.compile(r"^vlm\.vision_tower\.vision_model\."), "vlm.vision_tower."))
_PALIGEMMA_UNUSED = re.compile(r"^vlm\.(language_model\.)?lm_head\.")


class ColPaliEmbedder(PoolingModel):
    """``ColPaliForRetrieval`` (PaliGemma: SigLIP and Gemma) run by transformers' own class,
    padded: its projected, normalised vector of every token. A batch's images
    (``batch.multimodal``: each record's ``pixel_values`` ``[1, 3, H, W]``) fill their
    sequences' ``<image>`` rows in order."""

    def __init__(self, config: Any, task: str) -> None:
        super().__init__()
        if task != "embed":
            raise ValueError(f"ColPaliForRetrieval is a retrieval embedder (token_embed); "
                             f"task {task!r} does not apply to it.")
        from transformers import ColPaliForRetrieval

        self.retrieval = ColPaliForRetrieval(config).eval()
        self.pad_token_id = config.vlm_config.text_config.pad_token_id or 0

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        ids = batch.to_padded(batch.input_ids.unsqueeze(1)).squeeze(-1)
        lens = torch.tensor(batch.seq_lens, device=ids.device)
        mask = (torch.arange(ids.shape[1], device=ids.device)[None, :] < lens[:, None]).long()
        ids = ids.masked_fill(mask == 0, self.pad_token_id)
        pixels = [r.pixel_values for r in batch.multimodal or () if r is not None
                  and r.pixel_values is not None]
        out = self.retrieval(input_ids=ids, attention_mask=mask,
                             token_type_ids=torch.zeros_like(ids),
                             pixel_values=torch.cat(pixels) if pixels else None)
        return batch.from_padded(out.embeddings)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """The checkpoint's tensors by transformers' module names (either layout)."""
        state = {}
        for name, tensor in weights:
            if _PALIGEMMA_UNUSED.match(name):
                continue
            for pattern, replacement in _PALIGEMMA_RENAMES:
                name = pattern.sub(replacement, name)
            state[name] = tensor
        self.retrieval.load_state_dict(state, strict=True)
