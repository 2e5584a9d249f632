"""Queries and documents of visual document retrievers, made as transformers' processors
make them (ColPali's: see :class:`ColPaliInputs`). ColQwen2's (``ColQwen2Processor``):

- a text query is ``query_prefix + text + pad_token * 10 + "\\n"`` (``process_queries``:
  "Query: ", then ten augmentation tokens);
- an image is ``visual_prompt_prefix`` (``<|im_start|>user\\n<|vision_start|><|image_pad|>
  <|vision_end|>Describe the image.<|im_end|><|endoftext|>``) with its placeholder
  expanded to the image's vision tokens (``process_images``).

A text document (the processor has no document form for text) and a plain
``token_embed`` text are tokenised as they are, as for ColBERT in cenote; ask for the
query form with ``embedding_mode="query"``. Images may be queries as well as documents.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cenote.config.hf import architecture_of, is_visual_retriever
from cenote.config.hub import read_json
from cenote.exceptions import VLLMValidationError
from cenote.inputs.images import as_image, quiet_transformers
from cenote.inputs.multimodal import MultiModalData
from cenote.inputs.prompts import SequenceInput, is_image_prompt
from cenote.inputs.tokenizer import Tokenizer
from cenote.inputs.vision_language import VisionLanguageProcessor, vision_language_processor
from cenote.params import PoolingParams

_VISUAL_PROMPT = ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe the "
                  "image.<|im_end|><|endoftext|>")
_QUERY_PREFIX = "Query: "
_AUGMENTATION_TOKENS = 10


def visual_retrieval_inputs(path: Path, hf_config: Any, tokenizer: Tokenizer
                            ) -> VisualRetrievalInputs | None:
    """The queries and documents of a visual retriever, None for other models."""
    if not is_visual_retriever(hf_config):
        return None
    family = {"ColPaliForRetrieval": ColPaliInputs, "ColQwen3": ColQwen3Inputs}.get(
        architecture_of(hf_config), VisualRetrievalInputs)
    return family(path, hf_config, tokenizer)


class VisualRetrievalInputs:
    """ColQwen2's processor: the Qwen2-VL image processor of its ``vlm_config``, and the
    query and image prompts of its ``processor_config.json`` (transformers' defaults
    where it names none)."""

    name = "ColQwen2"
    query_special_tokens = True  # Qwen2's tokenizer adds none

    def __init__(self, path: Path, hf_config: Any, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.vision = VisionLanguageProcessor(path, hf_config.vlm_config, tokenizer)
        saved = read_json(Path(path) / "processor_config.json")
        self.visual_prompt = saved.get("visual_prompt_prefix") or _VISUAL_PROMPT
        self.query_prefix = saved.get("query_prefix") or _QUERY_PREFIX
        pad = tokenizer.hf.pad_token
        if pad is None:
            raise ValueError("ColQwen2's queries end in padding tokens; this tokenizer has no "
                             "pad token.")
        self.query_suffix = pad * _AUGMENTATION_TOKENS + "\n"

    @property
    def min_image_pixels(self) -> int:
        """What even a 1x1 image costs once pre-processed (it is scaled up to this)."""
        return int(self.vision.images.size["shortest_edge"])

    def prepare(self, items: Sequence[Any], params: PoolingParams, query: bool
                ) -> list[SequenceInput]:
        """Texts and image prompts as queries (``query``) or documents, as the processor
        makes them."""
        return [self._record(item, params, query) for item in items]

    def prepare_each(self, prompts: Sequence[Any], params: Sequence[PoolingParams],
                     query: bool) -> list[SequenceInput]:
        """Prompts read as queries or documents on request (``embedding_mode``)."""
        for i, prompt in enumerate(prompts):
            if not (isinstance(prompt, str) or is_image_prompt(prompt)):
                raise VLLMValidationError("embedding_mode takes text or image prompts; "
                                          "token prompts are not supported.",
                                          parameter="input")
            if prompt == "":
                raise ValueError(f"Prompt {i} is an empty string; it has nothing to encode.")
        return [self._record(prompt, p, query)
                for prompt, p in zip(prompts, params, strict=True)]

    def documents(self, seqs: Sequence[SequenceInput]) -> list[SequenceInput]:
        """Plain text records, as they are (no token is left out of ColQwen2's vectors)."""
        return list(seqs)

    def records(self, prompts: Sequence[Any], pooling_task: str, params: list[PoolingParams],
                add_special_tokens: bool = True) -> list[SequenceInput]:
        """Image prompts: without text, the processor's image prompt; with text, that text
        (its ``<|image_pad|>`` placeholders expanded)."""
        out = []
        for prompt, p in zip(prompts, params, strict=True):
            if prompt.get("prompt"):
                out += self.vision.records([prompt], pooling_task, [p], add_special_tokens)
            else:
                out.append(self._record(prompt, p, query=False))
        return out

    def _record(self, item: Any, params: PoolingParams, query: bool) -> SequenceInput:
        if is_image_prompt(item):
            if item.get("prompt"):
                raise ValueError(f"A {self.name} image input is the image alone (the processor "
                                 "writes its prompt); send text as an input of its own.")
            data = item["multi_modal_data"]
            if "video" in data:
                raise ValueError(f"{self.name} embeds text and images, not videos.")
            images = data["image"] if isinstance(data["image"], (list, tuple)) else [data["image"]]
            if len(images) != 1:
                raise ValueError(f"A {self.name} image input holds one image, not "
                                 f"{len(images)}.")
            ids, mm = self._image(images[0], item.get("mm_processor_kwargs"))
            return SequenceInput(ids, None, params, multimodal=mm)
        if isinstance(item, dict) and "prompt_token_ids" in item:
            raise TypeError("Scoring takes texts and images; token-id prompts are not "
                            "supported here.")
        if not isinstance(item, str):
            raise TypeError(f"A score input must be a text or an image prompt, not "
                            f"{type(item).__name__}.")
        cut = self.tokenizer.resolve_truncation(params.truncate_prompt_tokens,
                                                params.truncation_side)
        if not query:
            return SequenceInput(self.tokenizer.encode_prompts([item], cut)[0].token_ids,
                                 None, params)
        text = self.query_prefix + item + self.query_suffix
        ids = self.tokenizer.encode_prompts([text], cut, self.query_special_tokens)[0].token_ids
        return SequenceInput(ids, None, params)

    def _image(self, image: Any, kwargs: dict[str, Any] | None
               ) -> tuple[list[int], MultiModalData]:
        """An image's token ids (its prompt, the placeholder expanded) and pixels."""
        text, mm = self.vision.process(self.visual_prompt, [image], [], kwargs)
        return self.tokenizer.encode_prompts([text])[0].token_ids, mm


class ColQwen3Inputs(VisualRetrievalInputs):
    """colpali-engine's ``ColQwen3Processor``: Qwen3-VL's image processor (the checkpoint
    is a Qwen3-VL config), ColQwen2's image prompt, and a query that is the text and ten
    ``<|endoftext|>`` augmentation tokens (``process_queries``: no prefix, no newline)."""

    name = "ColQwen3"

    def __init__(self, path: Path, hf_config: Any, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.vision = vision_language_processor(path, hf_config, tokenizer)
        self.visual_prompt = _VISUAL_PROMPT
        self.query_prefix = ""
        self.query_suffix = "<|endoftext|>" * _AUGMENTATION_TOKENS


class ColPaliInputs(VisualRetrievalInputs):
    """ColPali's processor (``ColPaliProcessor``, loaded from the checkpoint's files): a
    query is ``bos + "Question: " + text + pad_token * 10 + "\n"``, an image
    ``"<image>" * image_seq_length + bos + "Describe the image.\n"`` with its SigLIP
    pixels (``process_queries`` / ``process_images``)."""

    name = "ColPali"
    query_special_tokens = False  # the processor writes the BOS itself

    def __init__(self, path: Path, hf_config: Any, tokenizer: Tokenizer) -> None:
        from transformers import ColPaliProcessor

        self.tokenizer = tokenizer
        with quiet_transformers():
            self.processor = ColPaliProcessor.from_pretrained(path)
        hf = self.processor.tokenizer
        self.query_prefix = hf.bos_token + self.processor.query_prefix
        self.query_suffix = self.processor.query_augmentation_token * _AUGMENTATION_TOKENS + "\n"

    @property
    def min_image_pixels(self) -> int:
        size = self.processor.image_processor.size
        return int(size["height"] * size["width"])

    def _image(self, image: Any, kwargs: dict[str, Any] | None
               ) -> tuple[list[int], MultiModalData]:
        if kwargs:
            raise ValueError("ColPali's images are resized to one size; mm_processor_kwargs "
                             "do not apply.")
        out = self.processor.process_images(images=[as_image(image)])
        # pixel_values' rows are images; the SigLIP tower reads image_seq_length patches each.
        pixels = out["pixel_values"].float()
        return (out["input_ids"][0].tolist(),
                MultiModalData(pixel_values=pixels,
                               tower_tokens=len(pixels) * self.processor.image_seq_length))
