"""Score prompts of vision-language rerankers: a query and a document, each a text or an
image, written into one prompt as the model's authors write them.

jina-reranker-m0 (``JinaVLForRanking``, its ``formatting_prompts_func`` and
``compute_score``): ``"**Document**:\\n" + document + "\\n**Query**:\\n" + query``, an
image written as ``<|vision_start|><|image_pad|><|vision_end|>`` (the document's image
first when both are images), then the score token (id 100) appended to the token ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cenote.config.hf import architecture_of, is_vl_reranker
from cenote.inputs.prompts import SequenceInput, is_image_prompt
from cenote.inputs.score_prompts import ScoreOptions, render_pairs
from cenote.inputs.tokenizer import Tokenizer
from cenote.inputs.vision_language import VisionLanguageProcessor
from cenote.params import PoolingParams

_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
# JinaVLForRanking.score_token_id: the token whose hidden state is scored.
JINA_VL_SCORE_TOKEN_ID = 100


def vl_reranker_inputs(path: Path, hf_config: Any, tokenizer: Tokenizer
                       ) -> JinaVLPairs | ChatTemplatePairs | None:
    """The score prompts of a vision-language reranker, None for other models."""
    if not is_vl_reranker(hf_config):
        return None
    jina = architecture_of(hf_config) == "JinaVLForRanking"
    return (JinaVLPairs if jina else ChatTemplatePairs)(path, hf_config, tokenizer)


class JinaVLPairs:
    """Query-document pairs of jina-reranker-m0, with their images pre-processed by the
    checkpoint's Qwen2-VL image processor."""

    def __init__(self, path: Path, hf_config: Any, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.vision = VisionLanguageProcessor(path, hf_config, tokenizer)

    @property
    def min_image_pixels(self) -> int:
        """What even a 1x1 image costs once pre-processed (it is scaled up to this)."""
        return int(self.vision.images.size["shortest_edge"])

    def records(self, prompts: Sequence[Any], pooling_task: str, params: list[PoolingParams],
                add_special_tokens: bool = True) -> list[SequenceInput]:
        """Image prompts outside a pair: their own text with placeholders."""
        return self.vision.records(prompts, pooling_task, params, add_special_tokens)

    def pairs(self, pairs: Sequence[tuple[Any, Any]], params: list[PoolingParams],
              options: ScoreOptions | None = None) -> list[SequenceInput]:
        """One record per (query, document) pair, ending in the score token."""
        if options is not None and options.chat_template is not None:
            raise ValueError("jina-reranker-m0 writes its own score prompt; chat_template "
                             "does not apply to it.")
        out = []
        for (query, document), p in zip(pairs, params, strict=True):
            images, kwargs = [], {}
            parts = []
            for label, item in (("Document", document), ("Query", query)):
                if is_image_prompt(item):
                    parts.append(f"**{label}**:\n{_IMAGE}")
                    images.append(_one_image(item))
                    kwargs.update(item.get("mm_processor_kwargs") or {})
                else:
                    parts.append(f"**{label}**:\n{item}")
            text, mm = self.vision.process("\n".join(parts), images, [], kwargs)
            cut = self.tokenizer.resolve_truncation(p.truncate_prompt_tokens, p.truncation_side)
            ids = self.vision.encode(text, cut)
            out.append(SequenceInput(ids + [JINA_VL_SCORE_TOKEN_ID], None, p,
                                     multimodal=mm if images else None))
        return out


def _one_image(prompt: dict[str, Any]) -> Any:
    if prompt.get("prompt"):
        raise ValueError("A reranker's image input is the image alone; send text as a query "
                         "or document of its own.")
    data = prompt["multi_modal_data"]
    if "video" in data:
        raise ValueError("This reranker scores texts and images, not videos.")
    image = data["image"]
    if isinstance(image, (list, tuple)):
        if len(image) != 1:
            raise ValueError(f"A reranker's image input holds one image, not {len(image)}.")
        image = image[0]
    return image


class ChatTemplatePairs(JinaVLPairs):
    """Qwen3-VL-Reranker's pairs: the messages ``query`` then ``document`` through the
    chat template (the request's, else the tokenizer's), an image written where its
    message's content goes as ``<|vision_start|><|image_pad|><|vision_end|>``, the
    images in the order the template writes them (vLLM's score template path)."""

    def pairs(self, pairs: Sequence[tuple[Any, Any]], params: list[PoolingParams],
              options: ScoreOptions | None = None) -> list[SequenceInput]:
        options = options or ScoreOptions()
        out = []
        for (query, document), p in zip(pairs, params, strict=True):
            marks = {"query": "\x00cenote-query\x00", "document": "\x00cenote-document\x00"}
            items = {"query": query, "document": document}
            shown = [(role, marks[role] if is_image_prompt(item) else item)
                     for role, item in items.items()]
            text = render_pairs([(shown[0][1], shown[1][1])], options, self.tokenizer.hf)[0]
            at = {role: text.find(mark) for role, mark in marks.items()
                  if is_image_prompt(items[role])}
            if any(position < 0 for position in at.values()):
                raise ValueError("The chat template does not write the image's message.")
            images = [_one_image(items[role]) for role in sorted(at, key=at.get)]
            for mark in marks.values():
                text = text.replace(mark, _IMAGE)
            expanded, mm = self.vision.process(text, images, [], {})
            cut = self.tokenizer.resolve_truncation(p.truncate_prompt_tokens, p.truncation_side)
            ids = self.vision.encode(expanded, cut, add_special_tokens=False)
            out.append(SequenceInput(ids, None, p,
                                     multimodal=mm if images else None))
        return out
