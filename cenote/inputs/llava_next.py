"""Image prompts of LLaVA-NeXT converted to an embedder (e5-v): the prompt's ``<image>``
expanded to the image's anyres tokens and its pixels made by the checkpoint's own
``LlavaNextProcessor`` (PIL backend), as transformers' processor makes them. e5-v's
prompts are the user's (its template: ``<image>\\nSummary above image in one word: `` in
a Llama 3 chat turn); texts without images go through the tokenizer as for any model."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cenote.inputs.images import as_image, quiet_transformers
from cenote.inputs.multimodal import MultiModalData
from cenote.inputs.prompts import SequenceInput
from cenote.params import PoolingParams


class LlavaNextInputs:
    """The checkpoint's ``LlavaNextProcessor``: one ``<image>`` per image in a prompt."""

    def __init__(self, path: Path, vision_config: Any = None) -> None:
        from transformers import LlavaNextProcessor

        try:
            with quiet_transformers():
                self.processor = LlavaNextProcessor.from_pretrained(path)
        except Exception as exc:
            raise ValueError(f"{path} has no usable LLaVA-NeXT processor: {exc}") from exc
        self.image_token = self.processor.image_token
        # A CLIP tower also runs its class token on each crop.
        self.class_tokens = int(getattr(vision_config, "model_type", "") == "clip_vision_model")

    def tower_tokens(self, image_sizes: Any) -> int:
        """The vision tower's tokens for images of ``image_sizes``: each image's anyres
        crops (its base image included; padding crops are not run) x tokens per crop."""
        from transformers.models.llava_next.modeling_llava_next import (
            image_size_to_num_patches,
        )

        images = self.processor.image_processor
        crop = images.crop_size
        per_crop = (crop["height"] // self.processor.patch_size) * (
            crop["width"] // self.processor.patch_size) + self.class_tokens
        return sum(image_size_to_num_patches(size, images.image_grid_pinpoints,
                                             crop["height"]) * per_crop
                   for size in image_sizes.tolist())

    @property
    def min_image_pixels(self) -> int:
        """What even a 1x1 image costs once pre-processed: its base crop."""
        crop = self.processor.image_processor.crop_size
        return int(crop["height"] * crop["width"])

    def records(self, prompts: Sequence[Any], pooling_task: str, params: list[PoolingParams],
                add_special_tokens: bool = True) -> list[SequenceInput]:
        out = []
        for prompt, p in zip(prompts, params, strict=True):
            data = prompt["multi_modal_data"]
            if "video" in data:
                raise ValueError("LLaVA-NeXT embeds texts and images, not videos.")
            images = data["image"] if isinstance(data["image"], (list, tuple)) else [data["image"]]
            text = prompt.get("prompt") or ""
            if text.count(self.image_token) != len(images):
                raise ValueError(f"The prompt has {text.count(self.image_token)} "
                                 f"{self.image_token} placeholders for {len(images)} images: "
                                 "give one placeholder per image.")
            if prompt.get("mm_processor_kwargs"):
                raise ValueError("mm_processor_kwargs do not apply to LLaVA-NeXT.")
            batch = self.processor(text=[text], images=[as_image(i) for i in images],
                                   add_special_tokens=add_special_tokens, return_tensors="pt")
            mm = MultiModalData(pixel_values=batch["pixel_values"].float(),
                                image_sizes=batch["image_sizes"],
                                tower_tokens=self.tower_tokens(batch["image_sizes"]))
            out.append(SequenceInput(batch["input_ids"][0].tolist(), None, p, multimodal=mm))
        return out
