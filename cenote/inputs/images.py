"""Image inputs for dual encoders (CLIP, SigLIP): decoded safely, pre-processed with the
checkpoint's own image processor settings (resize, crop, rescale, normalise; PIL, no
torchvision), and costed as the vision tower's tokens (its patches)."""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cenote.inputs.prompts import SequenceInput, dual_encoder_prompt
from cenote.params import PoolingParams

DEFAULT_MAX_IMAGE_PIXELS = 40_000_000
# Image processors scale the short side to the model's size: a very long, thin image
# would become a huge one (an 80000x2 PNG of 545 bytes took 20 GB to resize).
MAX_ASPECT_RATIO = 100
# The formats untrusted bytes may be parsed as (no EPS: PIL hands it to Ghostscript).
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF")


@dataclass(frozen=True)
class EncodedImage:
    """Image bytes whose header has been read and checked, not yet decoded: what a
    server request carries until its images are decoded, one at a time, when its
    records are made."""

    data: bytes = field(repr=False)
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def read_header(data: bytes, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> EncodedImage:
    """``data`` checked from its header alone (format, size, aspect ratio): nothing is
    decoded, so a decompression bomb costs nothing here."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
                width, height = image.size
    except Image.DecompressionBombError:
        raise ValueError(f"The image has more pixels than the {max_pixels} this server "
                         "takes (--max-image-pixels).") from None
    except (UnidentifiedImageError, OSError, EOFError, SyntaxError, ValueError):
        raise ValueError(_NOT_AN_IMAGE) from None
    check_size(width, height, max_pixels)
    return EncodedImage(data, width, height)


_NOT_AN_IMAGE = f"The image does not decode: not a {', '.join(IMAGE_FORMATS)} image, or damaged."


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Any:
    """Image bytes as an RGB ``PIL.Image``, upright (EXIF orientation); ``ValueError`` for
    bytes that are not an image, and for an image over ``max_pixels`` (checked from its
    header, before it is decoded in full: a decompression bomb never expands)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
            check_size(*image.size, max_pixels)
            image.load()
    except Image.DecompressionBombError:  # PIL's own check, at twice its default limit
        raise ValueError(f"The image has more pixels than the {max_pixels} this server "
                         "takes (--max-image-pixels).") from None
    except ValueError:
        raise
    except (UnidentifiedImageError, OSError, EOFError, SyntaxError):
        # PIL's own messages name its objects (`<_io.BytesIO object at 0x...>`): not sent.
        raise ValueError(_NOT_AN_IMAGE) from None
    return _upright_rgb(image)


def as_image(value: Any, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Any:
    """A prompt's image (a ``PIL.Image``, an ``HxWx3`` uint8 array, image bytes, or an
    :class:`EncodedImage`) as an upright RGB ``PIL.Image``."""
    from PIL import Image

    if isinstance(value, EncodedImage):  # its size was checked against the server's limit
        return decode_image(value.data, max(value.pixels, 1))
    if isinstance(value, (bytes, bytearray)):
        return decode_image(bytes(value), max_pixels)
    if isinstance(value, np.ndarray):
        if value.dtype != np.uint8 or value.ndim != 3 or value.shape[2] not in (3, 4):
            raise ValueError(f"An image array must be HxWx3 (or 4) uint8, not "
                             f"{value.shape} {value.dtype}.")
        value = Image.fromarray(value)
    if not isinstance(value, Image.Image):
        raise TypeError(f"An image must be a PIL.Image, an HxWx3 uint8 array or bytes, not "
                        f"{type(value).__name__}.")
    check_size(value.width, value.height, max_pixels)
    return _upright_rgb(value)


def check_size(width: int, height: int, max_pixels: int) -> None:
    """``ValueError`` for an image over ``max_pixels`` or of an extreme aspect ratio."""
    if width * height > max_pixels:
        raise ValueError(f"The image has {width}x{height} = {width * height} pixels, more "
                         f"than the {max_pixels} this server takes (--max-image-pixels).")
    if max(width, height) > MAX_ASPECT_RATIO * max(min(width, height), 1):
        raise ValueError(f"The image is {width}x{height}: its sides differ by more than "
                         f"{MAX_ASPECT_RATIO} times.")


def _upright_rgb(image: Any) -> Any:
    from PIL import ImageOps

    image = ImageOps.exif_transpose(image)
    return image if image.mode == "RGB" else image.convert("RGB")


def _patches(vision_config: Any) -> int:
    return getattr(vision_config, "num_patches", None) or (
        getattr(vision_config, "image_size", 224) // getattr(vision_config, "patch_size", 16)) ** 2


def processed_pixels(vision_config: Any) -> int:
    """The pixels of one image as the vision tower reads it: what even a 1x1 image costs
    in memory once pre-processed."""
    return _patches(vision_config) * getattr(vision_config, "patch_size", 16) ** 2


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' warnings silenced while a processor loads (without torchvision it
    picks the PIL backend, and says so), the level it had restored after: later warnings,
    for every model, still show."""
    logger = logging.getLogger("transformers")
    before = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(before)


class ImageProcessor:
    """The checkpoint's image processor (``preprocessor_config.json`` or
    ``processor_config.json``), on its PIL backend."""

    def __init__(self, path: Path, vision_config: Any) -> None:
        from transformers import AutoImageProcessor

        try:
            with quiet_transformers():
                self.processor = AutoImageProcessor.from_pretrained(path)
        except Exception as exc:  # no or broken processor files
            raise ValueError(f"{path} has no usable image processor "
                             f"(preprocessor_config.json): {exc}") from exc
        # A ViT's tokens: one per patch (SigLIP 2 declares its most), and CLIP's class token.
        self.cost = _patches(vision_config) + (
            getattr(vision_config, "model_type", "") == "clip_vision_model")
        # What even a 1x1 image costs once pre-processed (the server's pixel floor).
        self.min_image_pixels = processed_pixels(vision_config)

    def pixels(self, images: list[Any]) -> list[torch.Tensor]:
        """Each image as ``[3, H, W]`` pixel values."""
        batch = self.processor(images=images, return_tensors="pt")["pixel_values"]
        return list(batch.float().unbind(0))

    def records(self, prompts: Sequence[Any], pooling_task: str, params: list[PoolingParams],
                add_special_tokens: bool = True) -> list[SequenceInput]:
        """Image prompts (one image, no text each) as their pre-processed pixels."""
        if pooling_task != "embed":
            raise ValueError(f"Images are embedded (the embed task), not {pooling_task!r}.")
        # One at a time: a decoded image is dropped as soon as its pixels are made, so a
        # request holds at most one full-size image at once, not all of them.
        return [SequenceInput([], None, p, image_cost=self.cost,
                              pixel_values=self.pixels([as_image(
                                  dual_encoder_prompt(prompt, i)["multi_modal_data"]["image"])])[0])
                for i, (prompt, p) in enumerate(zip(prompts, params, strict=True))]
