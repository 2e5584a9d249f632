"""CLIP and SigLIP run natively: both towers on packed rows (``towers.py``), each
projected into the shared space as the checkpoint does.

- CLIP: a causal text tower pooled at its EOS token (the first one; the highest id for
  the original checkpoints, whose EOS id is 2 in the config), then ``text_projection``;
  a ViT pooled at its class token, then ``visual_projection``. Neither has a bias.
- SigLIP: texts padded with the pad token to the processor's ``max_length`` and no
  mask (pad tokens are attended to), pooled at the last position, then the text head;
  a ViT without class token, pooled by attention.

Other dual encoders (SigLIP 2's variable-resolution patches, remote code) run through
transformers (``dual_encoder.py``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cenote.models.batch import PackedBatch
from cenote.models.interface import AttentionShape, PoolingModel
from cenote.models.loading import ParameterLoader
from cenote.models.towers import TextTower, VisionTower

NATIVE_DUAL_ENCODERS = frozenset({"clip", "siglip"})

# Checkpoint name -> ours (after the q/k/v projections are taken out).
_RENAMES = [
    (r"^text_model\.embeddings\.", "text."),
    (r"^vision_model\.embeddings\.patch_embedding\.", "vision.patch."),
    (r"^vision_model\.embeddings\.", "vision."),
    (r"^(text|vision)_model\.encoder\.layers\.", r"\1.layers."),
    (r"\.self_attn\.out_proj\.", ".attn_out."),
    (r"\.layer_norm([12])\.", r".norm\1."),
    (r"\.mlp\.fc([12])\.", r".fc\1."),
    (r"^text_model\.final_layer_norm\.", "text.final_norm."),
    (r"^text_model\.head\.", "text_projection."),
    (r"^vision_model\.pre_layrnorm\.", "vision.pre_norm."),
    (r"^vision_model\.post_layernorm\.", "vision.post_norm."),
    (r"^vision_model\.head\.attention\.", "vision.head."),
    (r"^vision_model\.head\.layernorm\.", "vision.head.norm."),
    (r"^vision_model\.head\.mlp\.", "vision.head."),
    (r"^vision_model\.head\.", "vision.head."),
]
_QKV = re.compile(r"(text|vision)_model\.encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(\w+)")
_IGNORED = re.compile(r"^logit_(scale|bias)$|position_ids$")


def supports_natively(hf_config: Any) -> bool:
    """Whether this dual encoder's towers run natively here."""
    if getattr(hf_config, "model_type", None) not in NATIVE_DUAL_ENCODERS:
        return False
    vision = hf_config.vision_config
    return (vision.image_size % vision.patch_size == 0
            and getattr(vision, "vision_use_head", True) is not False)


class NativeDualEncoder(PoolingModel):
    """``forward``: a packed batch of texts -> their projected features, one row each;
    ``image_features``: pre-processed pixel values -> one row per image."""

    returns_pooled_rows = True
    embeds_images = True

    def __init__(self, hf_config: Any, max_model_len: int) -> None:
        super().__init__()
        self.family = hf_config.model_type
        text, vision = hf_config.text_config, hf_config.vision_config
        clip = self.family == "clip"
        self.text = TextTower(text, causal=clip)
        self.vision = VisionTower(vision, pooling="class" if clip else "attention")
        if clip:
            self.text_projection = nn.Linear(text.hidden_size, hf_config.projection_dim, bias=False)
            self.visual_projection = nn.Linear(vision.hidden_size, hf_config.projection_dim,
                                               bias=False)
        else:
            self.text_projection = nn.Linear(text.hidden_size,
                                             getattr(text, "projection_size", None)
                                             or text.hidden_size)
            self.visual_projection = None
        self.eos_token_id = getattr(text, "eos_token_id", None)
        self.pad_token_id = getattr(text, "pad_token_id", None) or 0
        self.pads_to = None if clip else max_model_len
        heads = vision.num_attention_heads
        self.attention_shape = AttentionShape(heads, heads, vision.hidden_size // heads, False)

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        if self.pads_to is not None:
            batch = self._padded_to_max_length(batch)
            return self.text_projection(self.text(batch, batch.cu_seqlens[1:] - 1))
        return self.text_projection(self.text(batch, self._eos_rows(batch)))

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        weight = self.vision.position_embedding.weight
        pooled = self.vision(pixel_values.to(weight.device, weight.dtype))
        return pooled if self.visual_projection is None else self.visual_projection(pooled)

    def _eos_rows(self, batch: PackedBatch) -> torch.Tensor:
        """The row of each text's EOS token: its first EOS, or (EOS id 2, the original
        checkpoints' config) its highest id; its first token if it has none."""
        ids = batch.input_ids[:batch.num_tokens]
        lens = torch.tensor(batch.seq_lens, device=ids.device)
        seq = torch.repeat_interleave(torch.arange(batch.num_seqs, device=ids.device), lens)
        if self.eos_token_id == 2:
            top = torch.full((batch.num_seqs,), -1, dtype=ids.dtype, device=ids.device)
            is_eos = ids == top.scatter_reduce(0, seq, ids, "amax")[seq]
        else:
            is_eos = ids == self.eos_token_id
        positions = batch.positions[:batch.num_tokens]
        never = torch.iinfo(positions.dtype).max
        first = torch.full((batch.num_seqs,), never, dtype=positions.dtype, device=ids.device)
        first = first.scatter_reduce(0, seq, positions.masked_fill(~is_eos, never), "amin")
        return batch.cu_seqlens[:-1] + first.masked_fill(first == never, 0)

    def _padded_to_max_length(self, batch: PackedBatch) -> PackedBatch:
        """SigLIP's texts as its processor pads them: to ``max_length``, pad tokens
        attended to."""
        if batch.padded_index is None and batch.max_len == self.pads_to:
            return dataclasses.replace(batch, pooled=None, pooled_rows=None)
        ids = batch.to_padded(batch.input_ids.unsqueeze(1)).squeeze(-1)
        lens = torch.tensor(batch.seq_lens, device=ids.device)
        padding = torch.arange(batch.max_len, device=ids.device)[None, :] >= lens[:, None]
        ids = F.pad(ids.masked_fill(padding, self.pad_token_id),
                    (0, self.pads_to - batch.max_len), value=self.pad_token_id)
        return PackedBatch.build(ids.tolist(), device=ids.device,
                                 bucket=batch.num_rows > batch.num_tokens)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy checkpoint tensors in, fusing q/k/v and flattening the patch convolution;
        every parameter must be set."""
        loader = ParameterLoader(self, self.family)
        for name, tensor in weights:
            if _IGNORED.search(name):
                continue
            match = _QKV.fullmatch(name)
            if match:
                tower, layer, part, kind = match.groups()
                loader.add_part(f"{tower}.layers.{layer}.qkv.{kind}", part, ("q", "k", "v"),
                                tensor)
                continue
            if name == "vision_model.embeddings.patch_embedding.weight":
                tensor = tensor.reshape(tensor.shape[0], -1)
            loader.assign_renamed(name, tensor, _RENAMES)
        loader.finish_all()
        for layer in [*self.text.layers, *self.vision.layers]:
            layer.fold_quick_gelu()
        if self.vision.head is None:
            self.vision.layers[-1].split_qkv()  # CLIP's last layer computes the class rows
