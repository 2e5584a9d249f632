"""Prompts for vision-language models (Qwen2-VL family): chat messages with text, image
and video parts rendered through the chat template, and a prompt's images and videos
pre-processed as the checkpoint's processor does, its placeholder tokens expanded to one
per vision token the language model reads.

Images go through the checkpoint's own image processor (``Qwen2VLImageProcessorPil``: no
torchvision). transformers' video processor needs torchvision, so video frames go
through the same image processor and are paired into temporal patches exactly as
``Qwen2VLVideoProcessor.patchify`` lays them out (frames resized with PIL, not
torchvision's interpolation)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cenote.config import ModelConfig
from cenote.config.hf import is_llava_next, is_vision_language
from cenote.exceptions import VLLMValidationError
from cenote.inputs.chat import render_chat
from cenote.inputs.images import ImageProcessor, as_image, quiet_transformers
from cenote.inputs.llava_next import LlavaNextInputs
from cenote.inputs.multimodal import MultiModalData
from cenote.inputs.prompts import SequenceInput
from cenote.inputs.tokenizer import Tokenizer, Truncation
from cenote.inputs.video import (
    DEFAULT_FRAME_RATE,
    EncodedVideo,
    SampledFrames,
    as_frames,
    sample_evenly_with_ends,
    sample_frame_indices,
)
from cenote.params import PoolingParams

# mm_processor_kwargs a request may set.
PROCESSOR_KWARGS = frozenset({"min_pixels", "max_pixels", "fps", "num_frames"})
# The video processor's defaults (Qwen2VLVideoProcessor) where its config is silent.
_VIDEO_DEFAULTS = {"min_pixels": 128 * 28 * 28, "max_pixels": 28 * 28 * 768}


def content_parts(content: Any) -> tuple[list[dict[str, Any]], list[Any], list[Any]]:
    """A message's content as the parts a chat template reads (``{"type": "image"}``,
    ``{"type": "video"}``, text parts as they are), and its images and videos in order,
    as vLLM hands them to templates."""
    if isinstance(content, str) or content is None:
        return content, [], []
    parts, images, videos = [], [], []
    for part in content:
        kind = part.get("type")
        if kind in ("image_url", "image", "image_pil"):
            images.append(part.get(kind) if kind != "image_url" else part["image_url"])
            parts.append({"type": "image"})
        elif kind in ("video_url", "video"):
            videos.append(part.get(kind) if kind != "video_url" else part["video_url"])
            parts.append({"type": "video"})
        else:
            parts.append(part)
    return parts, images, videos


class VisionLanguageProcessor:
    """The checkpoint's processor settings: its image processor (PIL backend), the video
    processor's sizes, and the placeholder tokens of its tokenizer."""

    image_token = "<|image_pad|>"
    video_token = "<|video_pad|>"
    # The video processor's defaults where its config is silent (Qwen2VLVideoProcessor:
    # no sampling, every frame read).
    samples_frames, default_fps = False, 2.0

    def __init__(self, path: Path, hf_config: Any, tokenizer: Tokenizer) -> None:
        from transformers import AutoImageProcessor

        self.tokenizer = tokenizer
        try:
            with quiet_transformers():
                self.images = AutoImageProcessor.from_pretrained(path)
        except Exception as exc:
            raise ValueError(f"{path} has no usable image processor "
                             f"(preprocessor_config.json): {exc}") from exc
        video_file = Path(path) / "video_preprocessor_config.json"
        video = json.loads(video_file.read_text()) if video_file.is_file() else {}
        size = video.get("size") or {}
        self.video_min_pixels = (video.get("min_pixels") or size.get("shortest_edge")
                                 or _VIDEO_DEFAULTS["min_pixels"])
        self.video_max_pixels = (video.get("max_pixels") or size.get("longest_edge")
                                 or _VIDEO_DEFAULTS["max_pixels"])
        self.video_fps = (video.get("fps", self.default_fps)
                          if video.get("do_sample_frames", self.samples_frames) else None)
        self.video_frame_range = (video.get("min_frames", 4), video.get("max_frames", 768))
        self.temporal_patch_size = self.images.temporal_patch_size
        self.merge = self.images.merge_size
        self.patch_size = self.images.patch_size
        self.image_token_id = hf_config.image_token_id
        self.video_token_id = hf_config.video_token_id

    @property
    def min_image_pixels(self) -> int:
        """What even a 1x1 image costs once pre-processed (it is scaled up to this)."""
        return int(self.images.size["shortest_edge"])

    def decoded_frames(self, video: EncodedVideo, kwargs: dict[str, Any] | None) -> int:
        """How many frames of ``video`` its pre-processing decodes (sampled as
        :meth:`process` samples them): what it costs in decoded pixels, per frame size."""
        return len(self.frame_indices(video.frames, video.fps, checked_kwargs(kwargs)))

    def frame_indices(self, total: int, video_fps: float | None, kwargs: dict[str, Any]
                      ) -> list[int]:
        """Qwen2-VL's ``sample_frames``: the request's ``num_frames`` or ``fps``, else the
        video processor's own fps (a rate needs the video's: frames given without one
        are all read, or ``num_frames`` of them)."""
        fps, num_frames = kwargs.get("fps"), kwargs.get("num_frames")
        if fps is None and num_frames is None:
            fps = self.video_fps
        return sample_frame_indices(total, video_fps, fps=fps if video_fps else None,
                                    num_frames=num_frames,
                                    temporal_patch_size=self.temporal_patch_size)

    def frame_images(self, frames: list[np.ndarray], kwargs: dict[str, Any]
                     ) -> tuple[list[Any], dict[str, int]]:
        """A video's frames as images, and the size the image processor gives each one:
        Qwen2-VL sizes every frame alone, between the video's min and max pixels."""
        from PIL import Image

        return [Image.fromarray(frame) for frame in frames], {
            "shortest_edge": kwargs.get("min_pixels", self.video_min_pixels),
            "longest_edge": kwargs.get("max_pixels", self.video_max_pixels)}

    def render(self, hf_tokenizer: Any, messages: list[dict[str, Any]], **options: Any
               ) -> tuple[str, list[Any], list[Any]]:
        """``messages`` through the chat template, and their images and videos in order."""
        rendered, images, videos = [], [], []
        for message in messages:
            parts, found_images, found_videos = content_parts(message.get("content"))
            rendered.append({**message, "content": parts})
            images += found_images
            videos += found_videos
        return render_chat(hf_tokenizer, rendered, **options), images, videos

    def process(self, text: str, images: list[Any], videos: list[Any],
                kwargs: dict[str, Any] | None = None) -> tuple[str, MultiModalData]:
        """``text`` with each placeholder expanded to its vision tokens, and the pixels of
        ``images`` and ``videos``; ``ValueError`` when placeholders and media disagree."""
        kwargs = checked_kwargs(kwargs)
        for name, count, token in (("images", len(images), self.image_token),
                                   ("videos", len(videos), self.video_token)):
            placeholders = text.count(token)
            if placeholders != count:
                raise ValueError(f"The prompt has {placeholders} {token} placeholders for "
                                 f"{count} {name}: give one placeholder per item.")
        data = MultiModalData()
        if images:
            data.pixel_values, data.image_grid_thw = self._image_patches(
                [as_image(image) for image in images], kwargs.get("min_pixels"),
                kwargs.get("max_pixels"))
            text = self._expand(text, self.image_token, data.image_grid_thw)
        if videos:
            patches, grids, sampled = zip(*(self._video_patches(video, kwargs)
                                            for video in videos), strict=True)
            data.pixel_values_videos = torch.cat(patches)
            data.video_grid_thw = torch.stack(grids)
            data.second_per_grid_ts = torch.tensor(
                [self.temporal_patch_size / s.sampled_fps for s in sampled], dtype=torch.float32)
            text = self._expand_videos(text, data.video_grid_thw, list(sampled))
        return text, data

    def _image_patches(self, images: list[Any], min_pixels: int | None,
                       max_pixels: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        size = dict(self.images.size)
        if min_pixels is not None:
            size["shortest_edge"] = min_pixels
        if max_pixels is not None:
            size["longest_edge"] = max_pixels
        out = self.images(images=images, size=size, return_tensors="pt")
        return out["pixel_values"].float(), out["image_grid_thw"].long()

    def _video_patches(self, video: Any, kwargs: dict[str, Any]
                       ) -> tuple[torch.Tensor, torch.Tensor, SampledFrames]:
        """A video's temporal patches: each sampled frame through the image processor at
        the video's size, then consecutive frames paired as the video processor's
        ``patchify`` pairs them (the last frame repeated to a whole pair)."""
        sampled = as_frames(video, lambda total, fps: self.frame_indices(total, fps, kwargs))
        tps = self.temporal_patch_size
        images, size = self.frame_images(sampled.frames, kwargs)
        images += [images[-1]] * (-len(images) % tps)
        pixels, grid = self._image_patches(images, size["shortest_edge"], size["longest_edge"])
        per_frame = int(grid[0, 1] * grid[0, 2])
        # [frames, patches, C, tps, p, p]: the image processor repeats each frame over tps
        p = self.patch_size
        pixels = pixels.view(len(images), per_frame, 3, tps, p, p)[:, :, :, 0]
        grid_t = len(images) // tps
        # pair k: frames k*tps .. k*tps+tps-1 along the temporal axis of each patch
        pixels = pixels.view(grid_t, tps, per_frame, 3, p, p).permute(0, 2, 3, 1, 4, 5)
        return (pixels.reshape(grid_t * per_frame, 3 * tps * p * p).contiguous(),
                torch.tensor([grid_t, int(grid[0, 1]), int(grid[0, 2])]), sampled)

    def _expand_videos(self, text: str, grids: torch.Tensor,
                       sampled: list[SampledFrames]) -> str:
        return self._expand(text, self.video_token, grids)

    def _expand(self, text: str, token: str, grids: torch.Tensor) -> str:
        """Each ``token`` as many times as its image or video has merged patches."""
        pieces = text.split(token)
        counts = (grids.prod(-1) // self.merge**2).tolist()
        return pieces[0] + "".join(token * n + piece
                                   for n, piece in zip(counts, pieces[1:], strict=True))

    def encode(self, text: str, cut: Truncation | None, add_special_tokens: bool = True
               ) -> list[int]:
        """``text`` (its placeholders expanded) tokenised and cut as ``cut`` says: only its
        text may be cut; a cut into an image's or video's vision tokens is refused (a
        ``ValueError`` naming truncate_prompt_tokens), for the request alone."""
        ids = self.tokenizer.encode_prompts([text], cut, add_special_tokens)[0].token_ids
        if cut is not None:
            want = text.count(self.image_token) + text.count(self.video_token)
            vision = (self.image_token_id, self.video_token_id)
            kept = sum(1 for i in ids if i in vision)
            if kept != want:
                raise VLLMValidationError(
                    f"truncate_prompt_tokens={cut.keep} (truncation_side {cut.side!r}) would "
                    f"cut into this prompt's {want} image/video tokens, keeping {kept}; only "
                    "text may be truncated: keep more tokens, truncate from the other side, "
                    "or leave truncate_prompt_tokens out.", parameter="truncate_prompt_tokens")
        return ids

    def records(self, prompts: Sequence[Any], pooling_task: str, params: list[PoolingParams],
                add_special_tokens: bool = True) -> list[SequenceInput]:
        """Prompts with images and videos (``{"prompt": text with placeholders,
        "multi_modal_data": {"image": ..., "video": ...}, "mm_processor_kwargs": ...}``) as
        records: their placeholders expanded, tokenised, their pixels beside."""
        out = []
        for prompt, p in zip(prompts, params, strict=True):
            data = prompt["multi_modal_data"]
            text, mm = self.process(prompt.get("prompt") or "", _listed(data.get("image")),
                                    _listed(data.get("video")),
                                    prompt.get("mm_processor_kwargs"))
            cut = self.tokenizer.resolve_truncation(p.truncate_prompt_tokens, p.truncation_side)
            out.append(SequenceInput(self.encode(text, cut, add_special_tokens), None, p,
                                     multimodal=mm))
        return out



class Qwen3VLInputs(VisionLanguageProcessor):
    """Qwen3-VL's processor: frames sampled from the first to the last, sized together
    (one pixel budget for the whole video, ``Qwen3VLVideoProcessor``'s ``smart_resize``),
    and each temporal patch its own placeholder run after its timestamp:
    ``<0.5 seconds><|vision_start|><|video_pad|>...<|vision_end|>`` (the chat template's
    single wrapper replaced by the runs)."""

    samples_frames = True

    def frame_indices(self, total: int, video_fps: float | None, kwargs: dict[str, Any]
                      ) -> list[int]:
        fps, num_frames = kwargs.get("fps"), kwargs.get("num_frames")
        if fps is None and num_frames is None:
            fps = self.video_fps
        low, high = self.video_frame_range
        return sample_evenly_with_ends(total, video_fps, fps=fps, num_frames=num_frames,
                                       min_frames=low, max_frames=high)

    def frame_images(self, frames: list[np.ndarray], kwargs: dict[str, Any]
                     ) -> tuple[list[Any], dict[str, int]]:
        from PIL import Image

        height, width = frames[0].shape[:2]
        factor = self.patch_size * self.merge
        low = kwargs.get("min_pixels", self.video_min_pixels)
        high = kwargs.get("max_pixels", self.video_max_pixels)
        h, w = video_size(len(frames), height, width, self.temporal_patch_size, factor, low,
                          high)
        images = [Image.fromarray(frame).resize((w, h), Image.Resampling.BICUBIC)
                  for frame in frames]
        return images, {"shortest_edge": h * w, "longest_edge": h * w}  # kept as they are

    def _expand_videos(self, text: str, grids: torch.Tensor,
                       sampled: list[SampledFrames]) -> str:
        start, end = "<|vision_start|>", "<|vision_end|>"
        text = text.replace(start + self.video_token + end, self.video_token)
        pieces = text.split(self.video_token)
        out = pieces[0]
        for grid, frames, piece in zip(grids.tolist(), sampled, pieces[1:], strict=True):
            run = self.video_token * (grid[1] * grid[2] // self.merge**2)
            for time in self._timestamps(frames):
                out += f"<{time:.1f} seconds>{start}{run}{end}"
            out += piece
        return out

    def _timestamps(self, sampled: SampledFrames) -> list[float]:
        """Each temporal patch's time: the mean of its first and last frame's."""
        tps = self.temporal_patch_size
        indices = sampled.indices + [sampled.indices[-1]] * (-len(sampled.indices) % tps)
        seconds = [i / (sampled.fps or DEFAULT_FRAME_RATE) for i in indices]
        return [(seconds[i] + seconds[i + tps - 1]) / 2 for i in range(0, len(seconds), tps)]


def video_size(frames: int, height: int, width: int, temporal_factor: int, factor: int,
               min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen3-VL's video ``smart_resize``: one size for every frame, the whole video's
    pixels (frames x height x width) between ``min_pixels`` and ``max_pixels``."""
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    t_bar = round(frames / temporal_factor) * temporal_factor
    if t_bar * h_bar * w_bar > max_pixels:
        beta = math.sqrt(frames * height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif t_bar * h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (frames * height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar

def checked_kwargs(kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """A request's ``mm_processor_kwargs``, checked: known names, positive values."""
    kwargs = dict(kwargs or {})
    unknown = set(kwargs) - PROCESSOR_KWARGS
    if unknown:
        raise ValueError(f"mm_processor_kwargs takes {', '.join(sorted(PROCESSOR_KWARGS))}, "
                         f"not {', '.join(sorted(unknown))}.")
    for name, value in kwargs.items():
        whole = name != "fps"
        if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)) \
                or value <= 0:
            raise ValueError(f"mm_processor_kwargs.{name} must be a positive "
                             f"{'integer' if whole else 'number'}, not {value!r}.")
    return kwargs


def _listed(value: Any) -> list[Any]:
    """One image or video, or a list of them, as a list (a video's own frame list is one
    video only inside a list)."""
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]



def vision_language_processor(path: Path, hf_config: Any, tokenizer: Tokenizer
                              ) -> VisionLanguageProcessor:
    """The processor of a Qwen2-VL, Qwen2.5-VL or Qwen3-VL configuration."""
    family = Qwen3VLInputs if hf_config.model_type == "qwen3_vl" else VisionLanguageProcessor
    return family(path, hf_config, tokenizer)

def image_inputs(config: ModelConfig, tokenizer: Tokenizer
                 ) -> VisionLanguageProcessor | LlavaNextInputs | ImageProcessor | None:
    """What turns a model's image prompts into records: a vision-language model's
    processor (LLaVA-NeXT's its own), a dual encoder's image processor, or None for a
    text-only model."""
    if is_vision_language(config.hf_config):
        return vision_language_processor(config.path, config.hf_config, tokenizer)
    if is_llava_next(config.hf_config):
        return LlavaNextInputs(config.path, config.hf_config.vision_config)
    if "image" in config.modalities:
        return ImageProcessor(config.path, config.hf_config.vision_config)
    return None
