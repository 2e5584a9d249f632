"""Input records: prompts as users give them, checked and turned into typed records
that the engine schedules (a record's ``cost`` is what it takes of a batch's budget)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from cenote.inputs.multimodal import MultiModalData
from cenote.inputs.score_content import content_input
from cenote.outputs import LateChunkingMetadata
from cenote.params import PoolingParams

Prompt = str | dict[str, Any]


def normalize_prompts(prompts: Prompt | Sequence[Prompt]) -> list[Prompt]:
    """A single prompt or a list of prompts, as a list; bad types raise ``TypeError``.
    vLLM's text prompt ``{"prompt": "..."}`` becomes its string, and a list of token ids
    in the list its ``{"prompt_token_ids": [...]}``."""
    if isinstance(prompts, (str, dict)):
        prompts = [prompts]
    elif not isinstance(prompts, (list, tuple)):
        raise TypeError(
            "prompts must be a string, a {'prompt_token_ids': [...]} dict, or a list of those; "
            f"got {type(prompts).__name__}."
        )
    out: list[Prompt] = []
    for i, prompt in enumerate(prompts):
        if isinstance(prompt, dict) and "multi_modal_data" in prompt:
            out.append(multimodal_prompt(prompt, i))
            continue
        if isinstance(prompt, dict) and "prompt_token_ids" not in prompt and isinstance(
                prompt.get("prompt"), str):
            prompt = prompt["prompt"]
        if isinstance(prompt, (list, tuple)) and prompt and all(
                isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            prompt = {"prompt_token_ids": list(prompt)}  # vLLM takes a list of ids as one
        if not (isinstance(prompt, str)
                or isinstance(prompt, dict) and "prompt_token_ids" in prompt):
            raise TypeError(
                f"Prompt {i} is a {type(prompt).__name__}; expected a string, a "
                "{'prompt_token_ids': [...]} dict or a {'prompt': '...'} dict."
            )
        out.append(prompt)
    return out


def multimodal_prompt(prompt: dict[str, Any], index: int) -> dict[str, Any]:
    """vLLM's multi-modal prompt, checked for its shape: ``multi_modal_data`` with an
    ``image`` and/or a ``video`` (one or a list each), ``mm_processor_kwargs`` a dict.
    What the model takes is checked by the engine."""
    data = prompt["multi_modal_data"]
    if not isinstance(data, dict) or not data or set(data) - {"image", "video"}:
        raise ValueError(f"Prompt {index}: multi_modal_data holds an 'image' and/or a "
                         "'video' (one or a list each).")
    if not isinstance(prompt.get("mm_processor_kwargs") or {}, dict):
        raise ValueError(f"Prompt {index}: mm_processor_kwargs must be a dict.")
    return prompt


def dual_encoder_prompt(prompt: dict[str, Any], index: int) -> dict[str, Any]:
    """A multi-modal prompt for a dual encoder, checked: one image and no text (it embeds
    a text or an image per input)."""
    data = prompt["multi_modal_data"]
    if not isinstance(data, dict) or set(data) != {"image"}:
        raise ValueError(f"Prompt {index}: multi_modal_data must hold one 'image'.")
    if isinstance(data["image"], (list, tuple)):
        raise ValueError(f"Prompt {index}: one image per prompt; give several prompts.")
    if prompt.get("prompt"):
        raise ValueError(f"Prompt {index}: an input is a text or an image, not both; "
                         "send the text as a prompt of its own.")
    return prompt


def is_image_prompt(prompt: Any) -> bool:
    return isinstance(prompt, dict) and "multi_modal_data" in prompt


def check_unicode(text: str, what: str) -> None:
    """``ValueError`` when ``text`` holds a lone surrogate (JSON's ``"\\ud800"`` can
    carry one): it is not valid Unicode, and tokenizers cannot encode it."""
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{what} is not valid Unicode: it holds a lone surrogate at "
                         f"character {exc.start}.") from None


def _score_text(item: object, where: str) -> str:
    """A score input as text: a string, or vLLM's text prompt ``{"prompt": "..."}``."""
    if is_image_prompt(item):
        return multimodal_prompt(item, 0)
    if isinstance(item, dict) and "content" in item:  # vLLM's ScoreMultiModalParam
        return content_input(item["content"], where)
    if isinstance(item, dict) and isinstance(item.get("prompt"), str):
        return item["prompt"]
    if isinstance(item, str):
        return item
    if isinstance(item, dict) and "prompt_token_ids" in item:
        raise TypeError(f"{where}: scoring takes texts (pairs are tokenised together); "
                        "token-id prompts are not supported here.")
    raise TypeError(f"{where} must be a string, not {type(item).__name__}.")


def make_score_pairs(text_1: str | Sequence[str], text_2: str | Sequence[str],
                     names: tuple[str, str] = ("text_1", "text_2")) -> list[tuple[str, str]]:
    """Pairs for 1:1, 1:N (text_1 broadcast) or N:N (zipped) inputs; ``names`` are the
    two sides' names in error messages."""
    sides = []
    for side, name in ((text_1, names[0]), (text_2, names[1])):
        single = isinstance(side, (str, dict))
        if not single and not isinstance(side, (list, tuple)):
            raise TypeError(f"{name} must be a string or a list of strings, not "
                            f"{type(side).__name__}.")
        # Named here: the embedding fallback numbers the texts its own way.
        items = [(name, side)] if single else [(f"{name}[{i}]", s) for i, s in enumerate(side)]
        sides.append([(where, _score_text(item, where)) for where, item in items])
    left, right = ([text for _, text in side] for side in sides)
    if not left or not right:
        raise ValueError("Score inputs must not be empty.")
    for side in sides:
        for where, text in side:
            if not isinstance(text, str):  # an image prompt
                continue
            if text == "":
                raise ValueError(f"{where} is an empty string; it has nothing to encode.")
            check_unicode(text, where)
    if len(left) == 1:
        left = left * len(right)
    if len(left) != len(right):
        raise ValueError("Input lengths must be either 1:1, 1:N or N:N")
    return list(zip(left, right, strict=True))


@dataclass
class TokenizedPrompt:
    token_ids: list[int]
    token_type_ids: list[int] | None = None


@dataclass
class SequenceInput:
    """One tokenised prompt with its resolved pooling parameters: a member of a batch."""

    token_ids: list[int]
    token_type_ids: list[int] | None
    params: PoolingParams
    # Leading tokens left out of MEAN pooling: an instruction's, for models whose
    # Sentence-Transformers Pooling has include_prompt false.
    pool_skip: int = 0
    # How many leading tokens the others attend to (None: all). ColBERT's query
    # expansion tokens are computed but not attended to.
    visible_len: int | None = None
    # Tokens whose rows a token-level output leaves out (a ColBERT document's
    # punctuation).
    drop_token_ids: frozenset[int] = frozenset()
    # An image input instead of text: its pre-processed pixels ([3, H, W]) and what it
    # costs a batch (a ViT's patch count, its tokens).
    pixel_values: torch.Tensor | None = None
    image_cost: int = 0
    # With late chunking: where each chunk's vector comes from, for the output.
    late_chunking: LateChunkingMetadata | None = None
    # A vision-language prompt's images and videos; its token_ids hold their placeholders.
    multimodal: MultiModalData | None = None
    # The LoRA adapter it runs through (its lora_int_id); 0: the base model.
    lora_id: int = 0

    @property
    def cost(self) -> int:
        """What the record takes of a batch's token budget."""
        if self.pixel_values is not None:
            return self.image_cost
        return len(self.token_ids) + (self.multimodal.patches if self.multimodal else 0)
