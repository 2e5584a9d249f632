"""The multimodal part of an input record: a prompt's images and videos pre-processed
for a vision-language model, beside its token ids (which hold one placeholder token per
vision token the language model reads)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class MultiModalData:
    """The tensors transformers' Qwen2-VL processors return, under the same names:
    patches flattened to ``[patches, channels * temporal_patch * patch * patch]`` and
    each image's or video's ``(t, h, w)`` patch grid, in prompt order."""

    pixel_values: torch.Tensor | None = None  # [image patches, D] float32
    image_grid_thw: torch.Tensor | None = None  # [images, 3] long
    pixel_values_videos: torch.Tensor | None = None  # [video patches, D] float32
    video_grid_thw: torch.Tensor | None = None  # [videos, 3] long
    # Seconds each video's temporal patch spans (temporal_patch_size / sampled fps): how
    # Qwen2.5-VL spaces its video positions in time.
    second_per_grid_ts: torch.Tensor | None = None  # [videos] float32
    # LLaVA-NeXT: each image's (height, width), its pixels [images, crops, C, H, W].
    image_sizes: torch.Tensor | None = None  # [images, 2] long
    # The vision tower's tokens where pixel_values' rows are not they (LLaVA-NeXT: its
    # rows are images; the tower reads each image's crops x patches per crop).
    tower_tokens: int | None = None

    @property
    def patches(self) -> int:
        """The vision tower's tokens: what the record costs a batch beside its text."""
        if self.tower_tokens is not None:
            return self.tower_tokens
        return sum(len(p) for p in (self.pixel_values, self.pixel_values_videos)
                   if p is not None)

    def to(self, device: torch.device | str) -> MultiModalData:
        def moved(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return MultiModalData(moved(self.pixel_values), moved(self.image_grid_thw),
                              moved(self.pixel_values_videos), moved(self.video_grid_thw),
                              self.second_per_grid_ts, moved(self.image_sizes),
                              self.tower_tokens)
