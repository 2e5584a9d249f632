"""Qwen3-VL-Reranker as vLLM's recipe serves it (``Qwen3VLForSequenceClassification``,
the "no"/"yes" LM-head rows, its chat template): parity with transformers'
Qwen3VLForConditionalGeneration's sigmoid(logit_yes - logit_no) at the last token."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from PIL import Image

from cenote import LLM
from tests.colpali_factories import build_tiny_qwen3_vl_reranker

# vLLM's examples/pooling/score/template/qwen3_vl_reranker.jinja
TEMPLATE = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the "
    "Query and the Instruct provided. Note that the answer can only be \"yes\" or \"no\"."
    "<|im_end|>\n<|im_start|>user\n<Instruct>: Given a search query, retrieve relevant "
    "candidates that answer the query.<Query>:{{ messages | selectattr(\"role\", \"eq\", "
    "\"query\") | map(attribute=\"content\") | first }}\n<Document>:{{ messages | "
    "selectattr(\"role\", \"eq\", \"document\") | map(attribute=\"content\") | first }}"
    "<|im_end|>\n<|im_start|>assistant\n")
IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
OVERRIDES = {"architectures": ["Qwen3VLForSequenceClassification"],
             "classifier_from_token": ["no", "yes"], "is_original_qwen3_reranker": True}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_tiny_qwen3_vl_reranker(tmp_path_factory.mktemp("qwen3-vl-reranker"))


def page(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


@functools.cache
def reference_parts(checkpoint):
    from transformers import AutoImageProcessor, AutoTokenizer, Qwen3VLForConditionalGeneration

    return (Qwen3VLForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32),
            AutoTokenizer.from_pretrained(checkpoint),
            AutoImageProcessor.from_pretrained(checkpoint))


def reference_score(checkpoint, query, document) -> float:
    model, tokenizer, images = reference_parts(checkpoint)
    shown = [IMAGE if isinstance(x, Image.Image) else x for x in (query, document)]
    text = tokenizer.apply_chat_template(
        [{"role": "query", "content": shown[0]}, {"role": "document", "content": shown[1]}],
        chat_template=TEMPLATE, tokenize=False)
    pictures = [x for x in (query, document) if isinstance(x, Image.Image)]
    kwargs = {}
    if pictures:
        out = images(images=pictures, return_tensors="pt")
        kwargs = {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}
        pieces = text.split("<|image_pad|>")
        counts = (out["image_grid_thw"].prod(-1) // images.merge_size**2).tolist()
        text = pieces[0] + "".join("<|image_pad|>" * n + p
                                   for n, p in zip(counts, pieces[1:], strict=True))
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    types = (ids == model.config.image_token_id).int()
    with torch.no_grad():
        logits = model(input_ids=ids, mm_token_type_ids=types, **kwargs).logits[0, -1]
    yes, no = tokenizer.convert_tokens_to_ids(["yes", "no"])
    return torch.sigmoid(logits[yes] - logits[no]).item()


def test_scores_match_transformers(checkpoint):
    llm = LLM(str(checkpoint), dtype="float32", hf_overrides=OVERRIDES)
    assert llm.engine.config.task == "classify"
    image = page(64, 96, 0)
    documents = [{"prompt": "", "multi_modal_data": {"image": image}}, "a text document"]
    ours = [o.outputs.score for o in llm.score("a red chart", documents,
                                               chat_template=TEMPLATE)]
    theirs = [reference_score(checkpoint, "a red chart", image),
              reference_score(checkpoint, "a red chart", "a text document")]
    assert ours == pytest.approx(theirs, abs=1e-5)
    # an image as the query, a text as the document
    ours = llm.score({"prompt": "", "multi_modal_data": {"image": image}}, "some text",
                     chat_template=TEMPLATE)[0].outputs.score
    assert ours == pytest.approx(reference_score(checkpoint, image, "some text"), abs=1e-5)
