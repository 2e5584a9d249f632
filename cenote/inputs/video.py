"""Video inputs for vision-language models: the container's header read and checked
before anything is decoded (a zero-length or hour-long video is refused from it), frames
sampled as transformers' Qwen2-VL video processor samples them, and decoded with PyAV
(FFmpeg's decoders; no torchvision)."""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cenote.inputs.images import DEFAULT_MAX_IMAGE_PIXELS, check_size

DEFAULT_MAX_VIDEO_FRAMES = 1024
DEFAULT_MAX_VIDEO_SECONDS = 600.0
_NOT_A_VIDEO = "The video does not decode: not a video container PyAV reads, or damaged."


@dataclass(frozen=True)
class EncodedVideo:
    """Video bytes whose header has been read and checked, not yet decoded."""

    data: bytes = field(repr=False)
    frames: int
    fps: float
    width: int
    height: int

    @property
    def seconds(self) -> float:
        return self.frames / self.fps if self.fps else 0.0


def read_video_header(data: bytes, max_frames: int = DEFAULT_MAX_VIDEO_FRAMES,
                      max_seconds: float = DEFAULT_MAX_VIDEO_SECONDS,
                      max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> EncodedVideo:
    """``data`` checked from its container header alone (a video stream, its frame
    count, length and frame size); ``ValueError`` naming the limit it breaks."""
    import av

    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise ValueError("The video has no video stream.")
            stream = container.streams.video[0]
            rate = float(stream.average_rate or stream.guessed_rate or 0)
            if stream.duration is not None and stream.time_base is not None:
                seconds = float(stream.duration * stream.time_base)
            else:
                seconds = (container.duration or 0) / 1_000_000
            frames = stream.frames or round(seconds * rate)
            width, height = stream.codec_context.width, stream.codec_context.height
    except av.error.FFmpegError:  # (a ValueError too) its message is never sent
        raise ValueError(_NOT_A_VIDEO) from None
    except ValueError:
        raise
    except Exception:  # a container PyAV cannot read as one
        raise ValueError(_NOT_A_VIDEO) from None
    if frames <= 0 or rate <= 0:
        raise ValueError("The video has no frames (or its container does not say how many).")
    if frames > max_frames:
        raise ValueError(f"The video has {frames} frames, more than the {max_frames} this "
                         "server takes (--max-video-frames).")
    if frames / rate > max_seconds:
        raise ValueError(f"The video lasts {frames / rate:.0f} s, longer than the "
                         f"{max_seconds:g} s this server takes (--max-video-seconds).")
    check_size(width, height, max_pixels)
    return EncodedVideo(data, frames, rate, width, height)


def sample_frame_indices(total: int, video_fps: float | None, *, fps: float | None = None,
                         num_frames: int | None = None, temporal_patch_size: int = 2,
                         min_frames: int = 4, max_frames: int = 768) -> list[int]:
    """Which of ``total`` frames a Qwen2-VL video processor reads (its ``sample_frames``):
    ``num_frames`` evenly spread (rounded to whole temporal patches), or ``fps`` per
    second of video; every frame when neither is given."""
    if fps is not None and num_frames is not None:
        raise ValueError("mm_processor_kwargs: fps and num_frames are mutually exclusive.")
    if num_frames is not None:
        num_frames = round(num_frames / temporal_patch_size) * temporal_patch_size
    elif fps is not None:
        if not video_fps:
            raise ValueError("Sampling by fps needs the video's frame rate; give num_frames "
                             "for frames without one.")
        most = math.floor(min(max_frames, total) / temporal_patch_size) * temporal_patch_size
        wanted = min(max(total / video_fps * fps, min_frames), most, total)
        num_frames = math.floor(wanted / temporal_patch_size) * temporal_patch_size
    if num_frames is None:
        return list(range(total))
    if not 0 < num_frames <= total:
        raise ValueError(f"Cannot sample {num_frames} frames from a video of {total}.")
    # np.arange in float32 then int, as the processor's torch.arange(...).int()
    return [int(i) for i in np.arange(0, total, total / num_frames, dtype=np.float32)
            .astype(np.int64)][:num_frames]


def decode_frames(video: EncodedVideo, indices: list[int]) -> list[np.ndarray]:
    """The frames at ``indices`` as ``HxWx3`` uint8 RGB arrays; decoding stops after the
    last one wanted."""
    import av

    if not indices:
        raise ValueError("No frames were sampled from the video: at least one is needed.")
    wanted, last_wanted = set(indices), max(indices)
    frames: dict[int, np.ndarray] = {}
    try:
        with av.open(io.BytesIO(video.data), mode="r") as container:
            stream = container.streams.video[0]
            for i, frame in enumerate(container.decode(stream)):
                if i in wanted:
                    frames[i] = frame.to_ndarray(format="rgb24")
                if i >= last_wanted or i >= video.frames:
                    break
    except Exception:
        raise ValueError(_NOT_A_VIDEO) from None
    if not frames:
        raise ValueError(_NOT_A_VIDEO)
    # A header may count a frame or two more than the stream holds: repeat the last.
    last = frames[max(frames)]
    return [frames.get(i, last) for i in indices]


# The frame rate transformers assumes for frames given without one (VideoMetadata).
DEFAULT_FRAME_RATE = 24.0
# Which frames of ``total`` (at ``fps`` frames per second, None if unknown) to read.
FrameSampler = Callable[[int, float | None], list[int]]


def sample_evenly_with_ends(total: int, video_fps: float | None, *, fps: float | None = None,
                            num_frames: int | None = None, min_frames: int = 4,
                            max_frames: int = 768) -> list[int]:
    """Qwen3-VL's ``sample_frames``: ``num_frames`` (or ``fps`` per second of video; all
    frames when neither is given) spread from the first frame to the last, rounded."""
    if fps is not None and num_frames is not None:
        raise ValueError("mm_processor_kwargs: fps and num_frames are mutually exclusive.")
    if num_frames is None and fps is not None:
        num_frames = int(total / (video_fps or DEFAULT_FRAME_RATE) * fps)
        num_frames = min(max(num_frames, min_frames), max_frames, total)
    if num_frames is None:
        num_frames = min(max(total, min_frames), max_frames)
    return np.linspace(0, total - 1, num_frames).round().astype(int).tolist()


@dataclass
class SampledFrames:
    """The frames a video's pre-processing reads, where they were in it, and its rate."""

    frames: list[np.ndarray]
    indices: list[int]
    total: int
    fps: float | None  # None: frames given without a rate

    @property
    def sampled_fps(self) -> float:
        """transformers' ``VideoMetadata.sampled_fps``: 24 for frames without a rate."""
        if not self.fps:
            return DEFAULT_FRAME_RATE
        return len(self.indices) / self.total * self.fps


def as_frames(value: Any, sample: FrameSampler) -> SampledFrames:
    """A prompt's video (video bytes, an :class:`EncodedVideo`, a ``[frames, H, W, 3]``
    uint8 array, or a list of frames as arrays or ``PIL.Image``) as the frames ``sample``
    picks."""
    if isinstance(value, (bytes, bytearray)):
        value = read_video_header(bytes(value))
    if isinstance(value, EncodedVideo):
        indices = sample(value.frames, value.fps)
        return SampledFrames(decode_frames(value, indices), indices, value.frames, value.fps)
    if isinstance(value, np.ndarray) and value.ndim == 4:
        value = list(value)
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError("A video must be video bytes, a [frames, H, W, 3] uint8 array or a "
                         f"non-empty list of frames, not {type(value).__name__}.")
    frames = [np.asarray(frame.convert("RGB")) if hasattr(frame, "convert") else frame
              for frame in value]
    for frame in frames:
        if not (isinstance(frame, np.ndarray) and frame.dtype == np.uint8 and frame.ndim == 3
                and frame.shape[2] == 3):
            raise ValueError("Each video frame must be an HxWx3 uint8 array or a PIL.Image.")
    indices = sample(len(frames), None)
    return SampledFrames([frames[i] for i in indices], indices, len(frames), None)
