"""Qwen2-VL as an embedder (GME, DSE, Qwen2-VL-based Qwen3-VL-Embedding forerunners): the
vision tower is transformers' own (``Qwen2VisionTransformerPretrainedModel``), the
language model is cenote's packed decoder (``decoder.py``'s Qwen2 layers).

A prompt's token ids hold one placeholder per merged vision token; the vision tower's
outputs replace those rows of the token embeddings (``inputs_embeds``), and every token
is rotated by its multimodal position (M-RoPE): text tokens by ``(p, p, p)``, vision
tokens by ``(start + t, start + h, start + w)`` on their grid, each third of the
rotary frequencies (``mrope_section``) reading one of the three. Text-only and image
prompts share one packed batch, with no padding; LAST pooling (normalised, Matryoshka
``dimensions``) happens in the pooler as for any decoder.
"""

from __future__ import annotations

import copy
import importlib
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cenote.models.batch import PackedBatch
from cenote.models.decoder import DecoderModel, rope_frequencies
from cenote.models.interface import PoolingModel

if TYPE_CHECKING:
    from cenote.inputs.multimodal import MultiModalData

_VISION_PREFIX = re.compile(r"^(model\.)?visual\.")
_LANGUAGE_PREFIX = re.compile(r"^model\.language_model\.")


def placeholder_runs(token_ids: np.ndarray, vision_ids: tuple[int, int]
                     ) -> list[tuple[int, int, int]]:
    """``(start, end, token id)`` of each run of equal tokens, a text run's id -1."""
    key = np.where(np.isin(token_ids, vision_ids), token_ids, -1)
    edges = np.flatnonzero(key[1:] != key[:-1]) + 1
    starts = np.concatenate(([0], edges))
    ends = np.concatenate((edges, [len(key)]))
    return [(int(a), int(b), int(key[a])) for a, b in zip(starts, ends, strict=True)]


def mrope_positions(runs: list[tuple[int, int, int]],
                    grids: list[tuple[int, int, int, float]], merge: int) -> np.ndarray:
    """``[3, tokens]`` positions of one prompt (transformers' ``get_rope_index``): each run
    of placeholder tokens takes the next grid ``(t, h, w, time step)`` (images and videos
    in prompt order; its temporal positions ``floor(i * step)``), and the text after it
    continues from the largest position so far, plus one."""
    out = np.empty((3, runs[-1][1]), dtype=np.int64)
    start = 0
    grid_iter = iter(grids)
    for a, b, token in runs:
        if token < 0:
            out[:, a:b] = np.arange(start, start + b - a)
            start += b - a
            continue
        t, h, w, step = next(grid_iter)
        h, w = h // merge, w // merge
        if t * h * w != b - a:
            raise ValueError(f"{b - a} placeholder tokens for a {t}x{h}x{w} vision grid.")
        times = (np.arange(t, dtype=np.float32) * np.float32(step)).astype(np.int64)
        grid = np.stack(np.meshgrid(times, np.arange(h), np.arange(w),
                                    indexing="ij")).reshape(3, -1)
        out[:, a:b] = grid + start
        start = int(out[:, a:b].max()) + 1
    return out


class Qwen2VLEmbedder(PoolingModel):
    """``Qwen2VLForConditionalGeneration`` as a pooling model: the language model's final
    hidden states, with the batch's images and videos (``batch.multimodal``) in their
    placeholder rows."""

    computes_pooled_rows_only = True
    # transformers' vision tower of the family ("module:Class").
    vision_tower = ("transformers.models.qwen2_vl.modeling_qwen2_vl:"
                    "Qwen2VisionTransformerPretrainedModel")
    # The decoder family its language model's layers are.
    language_family = "qwen2"

    def __init__(self, config: Any, task: str) -> None:
        super().__init__()
        module, _, name = self.vision_tower.partition(":")
        tower = getattr(importlib.import_module(module), name)
        text = copy.copy(config.text_config)
        text.model_type = self.language_family  # the same layers as Qwen2's (or Qwen3's)
        self.language = DecoderModel(text, task)
        self.classifier, self.classify_pad_token_id = (self.language.classifier,
                                                       self.language.classify_pad_token_id)
        self.attention_shape = self.language.attention_shape
        self.visual = tower._from_config(config.vision_config)
        self.image_token_id, self.video_token_id = config.image_token_id, config.video_token_id
        self.merge = config.vision_config.spatial_merge_size
        head_dim = self.language.attention_shape.head_dim
        self.inv_freq, self.scaling = rope_frequencies(text, head_dim)
        self.mrope_section = list(text.rope_parameters.get("mrope_section")
                                  or [head_dim // 2])

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        records = batch.multimodal
        x = self.language.embed_tokens(batch.input_ids)
        if not records or not any(r is not None for r in records):
            return self.language(batch, inputs_embeds=x)
        deepstack: list[tuple[torch.Tensor, list[torch.Tensor]]] = []
        # Placeholder ids in a text-only prompt (typed as text) are plain tokens there.
        lens = torch.tensor(batch.seq_lens, device=x.device)
        with_media = torch.tensor([r is not None for r in records], device=x.device)
        with_media = with_media.repeat_interleave(lens)
        for token_id, pixels, grids in (
                (self.image_token_id, "pixel_values", "image_grid_thw"),
                (self.video_token_id, "pixel_values_videos", "video_grid_thw")):
            found = [(getattr(r, pixels), getattr(r, grids)) for r in records
                     if r is not None and getattr(r, pixels) is not None]
            if found:
                features, extra = self.vision_features(torch.cat([p for p, _ in found]),
                                                       torch.cat([g for _, g in found]))
                ids = batch.input_ids[:batch.num_tokens]
                rows = ((ids == token_id) & with_media).nonzero().squeeze(1)
                if len(rows) != len(features):
                    raise ValueError(self._mismatch(batch, records, token_id, pixels, grids))
                x = x.index_copy(0, rows, features.to(x.dtype))
                deepstack.append((rows, extra))
        rotary = self.rotary(self.positions(batch, records), x.dtype)
        return self.run_language(batch, x, rotary, deepstack)

    def _mismatch(self, batch: PackedBatch, records: list[MultiModalData | None],
                  token_id: int, pixels: str, grids: str) -> str:
        """Which sequence's placeholder tokens disagree with its vision tokens (the engine
        then runs each sequence alone, so only that one's request fails)."""
        ids = batch.input_ids[:batch.num_tokens]
        bounds = batch.cu_seqlens.tolist()
        for b, record in enumerate(records):
            if record is None or getattr(record, pixels) is None:
                continue
            have = int((ids[bounds[b]:bounds[b + 1]] == token_id).sum())
            want = int((getattr(record, grids).prod(-1) // self.merge**2).sum())
            if have != want:
                return (f"Sequence {b} of the batch has {have} placeholder tokens for its "
                        f"{want} vision tokens (were they truncated?).")
        return "The batch's placeholder tokens disagree with its vision tokens."

    def run_language(self, batch: PackedBatch, x: torch.Tensor,
                     rotary: tuple[torch.Tensor, torch.Tensor],
                     deepstack: list[tuple[torch.Tensor, list[torch.Tensor]]]) -> torch.Tensor:
        """The language model over the merged rows (``deepstack``: Qwen3-VL's)."""
        return self.language(batch, inputs_embeds=x, rotary=rotary)

    def vision_features(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor
                        ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The merged vision tokens of images or videos, ``[sum(t*h*w) / merge^2, hidden]``,
        and the features the family adds to early layers' rows (none here)."""
        weight = self.visual.patch_embed.proj.weight
        return self.visual(pixel_values.to(weight.dtype), grid_thw=grid_thw).pooler_output, []

    def positions(self, batch: PackedBatch, records: list[MultiModalData | None]
                  ) -> torch.Tensor:
        """``[3, rows]`` multimodal positions: a text-only sequence's are its 1-D ones."""
        out = batch.positions.unsqueeze(0).repeat(3, 1)
        ids = batch.input_ids[:batch.num_tokens].cpu().numpy()
        bounds = batch.cu_seqlens.tolist()
        vision_ids = (self.image_token_id, self.video_token_id)
        for b, record in enumerate(records):
            if record is None:
                continue
            runs = placeholder_runs(ids[bounds[b]:bounds[b + 1]], vision_ids)
            grids = {self.image_token_id: iter(_rows(record.image_grid_thw)),
                     self.video_token_id: iter(self.video_grids(record))}
            ordered = [next(grids[token]) for _, _, token in runs if token >= 0]
            pos = mrope_positions(runs, ordered, self.merge)
            out[:, bounds[b]:bounds[b + 1]] = torch.from_numpy(pos).to(out.device)
        return out

    def video_grids(self, record: MultiModalData) -> list[tuple[int, int, int, float]]:
        """Each video's grid and the step between its temporal positions: one per
        temporal patch (Qwen2-VL)."""
        return _rows(record.video_grid_thw)

    def rotary(self, positions: torch.Tensor, dtype: torch.dtype
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin ``[rows, 1, head_dim]``: section k of the frequencies from axis k % 3."""
        inv_freq = self.inv_freq.to(positions.device)
        freqs = positions.float().unsqueeze(-1) * inv_freq  # [3, rows, head_dim / 2]
        freqs = torch.cat([part[k % 3] for k, part in
                           enumerate(freqs.split(self.mrope_section, dim=-1))], dim=-1)
        emb = torch.cat((freqs, freqs), dim=-1).unsqueeze(1)
        return (emb.cos() * self.scaling).to(dtype), (emb.sin() * self.scaling).to(dtype)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """The vision tower's tensors (``visual.*``) into transformers' tower, the rest
        into the decoder (``model.*``, or ``model.language_model.*`` as transformers 5
        names them)."""
        vision: dict[str, torch.Tensor] = {}

        def language() -> Iterable[tuple[str, torch.Tensor]]:
            for name, tensor in weights:
                if _VISION_PREFIX.match(name):
                    vision[_VISION_PREFIX.sub("", name)] = tensor
                else:
                    yield _LANGUAGE_PREFIX.sub("model.", name), tensor

        self.language.load_weights(language())
        self.visual.load_state_dict(vision, strict=True)


def _rows(grid: torch.Tensor | None, steps: list[float] | None = None
          ) -> list[tuple[int, int, int, float]]:
    if grid is None:
        return []
    steps = steps or [1.0] * len(grid)
    return [(*row, step) for row, step in zip(grid.tolist(), steps, strict=True)]


class Qwen2_5_VLEmbedder(Qwen2VLEmbedder):
    """``Qwen2_5_VLForConditionalGeneration``: Qwen2-VL's language model and positions,
    its own vision tower (window attention, RMSNorm, gated MLP), and video positions
    spaced in time: ``tokens_per_second * second_per_grid_ts`` per temporal patch."""

    vision_tower = ("transformers.models.qwen2_5_vl.modeling_qwen2_5_vl:"
                    "Qwen2_5_VisionTransformerPretrainedModel")

    def __init__(self, config: Any, task: str) -> None:
        super().__init__(config, task)
        self.tokens_per_second = config.vision_config.tokens_per_second

    def video_grids(self, record: MultiModalData) -> list[tuple[int, int, int, float]]:
        seconds = record.second_per_grid_ts
        if record.video_grid_thw is None:
            return []
        seconds = [1.0] * len(record.video_grid_thw) if seconds is None else seconds.tolist()
        return _rows(record.video_grid_thw, [self.tokens_per_second * s for s in seconds])


class Qwen3VLEmbedder(Qwen2VLEmbedder):
    """``Qwen3VLForConditionalGeneration`` (Qwen3-VL-Embedding): Qwen3's language model
    (q/k RMSNorm), transformers' Qwen3-VL vision tower, interleaved M-RoPE (the
    frequencies cycle t, h, w instead of running in three blocks) and DeepStack: the
    tower's intermediate features added to the vision rows after the first layers."""

    vision_tower = "transformers.models.qwen3_vl.modeling_qwen3_vl:Qwen3VLVisionModel"
    language_family = "qwen3"

    def video_grids(self, record: MultiModalData) -> list[tuple[int, int, int, float]]:
        """One grid per temporal patch: each is its own placeholder run, after its
        timestamp."""
        return [(1, h, w, 1.0) for t, h, w, _ in _rows(record.video_grid_thw)
                for _ in range(t)]

    def vision_features(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor
                        ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        weight = self.visual.patch_embed.proj.weight
        out = self.visual(pixel_values.to(weight.dtype), grid_thw=grid_thw)
        return out.pooler_output, list(out.deepstack_features)

    def run_language(self, batch: PackedBatch, x: torch.Tensor,
                     rotary: tuple[torch.Tensor, torch.Tensor],
                     deepstack: list[tuple[torch.Tensor, list[torch.Tensor]]]) -> torch.Tensor:
        language = self.language
        depth = max((len(extra) for _, extra in deepstack), default=0)
        last = len(language.layers) - 1
        for i, layer in enumerate(language.layers):
            # A pooled-only last layer would drop the rows DeepStack still adds to.
            pooled_only = i == last and batch.pooled is not None and i >= depth
            x = layer(x, *rotary, batch, pooled_only=pooled_only)
            for rows, extra in deepstack:
                if i < len(extra):
                    x = x.index_add(0, rows, extra[i].to(x.dtype))
        if batch.pooled is not None and depth > last:  # every row ran: keep the pooled
            x = x[batch.pooled_rows]
        return language.norm(x)

    def rotary(self, positions: torch.Tensor, dtype: torch.dtype
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Interleaved: frequency j reads axis h where j % 3 == 1 and j < 3 * sections[1],
        axis w where j % 3 == 2 and j < 3 * sections[2], else t."""
        freqs = positions.float().unsqueeze(-1) * self.inv_freq.to(positions.device)
        mixed = freqs[0].clone()
        for axis in (1, 2):
            picked = slice(axis, 3 * self.mrope_section[axis], 3)
            mixed[..., picked] = freqs[axis, ..., picked]
        emb = torch.cat((mixed, mixed), dim=-1).unsqueeze(1)
        return (emb.cos() * self.scaling).to(dtype), (emb.sin() * self.scaling).to(dtype)
