"""LLaVA-NeXT converted to an embedder (e5-v), the generic *ForConditionalGeneration
conversion: LAST token, normalised, on transformers' LlavaNextModel; parity with that
class fed by the checkpoint's own LlavaNextProcessor, texts and images in one batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cenote import LLM
from tests.colpali_factories import build_tiny_e5v

# e5-v's prompts (its model card), around a Llama 3 chat turn.
TEMPLATE = ("<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|><|start_header_id|>"
            "assistant<|end_header_id|>\n\n \n")
IMAGE_PROMPT = TEMPLATE.format("<image>\nSummary above image in one word: ")


def text_prompt(text: str) -> str:
    return TEMPLATE.format(f"{text}\nSummary above sentence in one word: ")


@pytest.fixture(scope="module")
def e5v(tmp_path_factory):
    return build_tiny_e5v(tmp_path_factory.mktemp("e5-v"))


def picture(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


def test_embeddings_match_transformers(e5v):
    from transformers import LlavaNextModel, LlavaNextProcessor

    llm = LLM(str(e5v), dtype="float32")
    assert llm.engine.config.task == "embed"
    images = [picture(70, 40, 0), picture(30, 60, 1)]  # different anyres grids
    prompts = [{"prompt": IMAGE_PROMPT, "multi_modal_data": {"image": image}}
               for image in images] + [text_prompt("a stop sign")]
    ours = [torch.tensor(o.outputs.embedding) for o in llm.embed(prompts)]
    model = LlavaNextModel.from_pretrained(e5v, dtype=torch.float32).eval()
    processor = LlavaNextProcessor.from_pretrained(e5v)
    theirs = []
    for prompt in prompts:
        image = prompt["multi_modal_data"]["image"] if isinstance(prompt, dict) else None
        text = prompt["prompt"] if isinstance(prompt, dict) else prompt
        batch = processor(text=[text], images=[image] if image else None, return_tensors="pt")
        with torch.no_grad():
            last = model(**batch).last_hidden_state[0, -1]
        theirs.append(torch.nn.functional.normalize(last, dim=0))
    for o, t in zip(ours, theirs, strict=True):
        torch.testing.assert_close(o, t, atol=2e-5, rtol=1e-4)


def test_placeholders_must_match_images(e5v):
    llm = LLM(str(e5v), dtype="float32")
    with pytest.raises(ValueError, match="placeholder"):
        llm.embed({"prompt": text_prompt("no image token"),
                   "multi_modal_data": {"image": picture(28, 28, 2)}})


def test_loading_the_processor_leaves_transformers_logging_as_it_was(e5v):
    import logging

    from cenote.inputs.llava_next import LlavaNextInputs

    logger = logging.getLogger("transformers")
    before = logger.level
    logger.setLevel(logging.WARNING)
    try:
        LlavaNextInputs(e5v)
        assert logger.level == logging.WARNING
    finally:
        logger.setLevel(before)


def test_a_record_costs_its_images_vision_tower_tokens(e5v):
    from transformers import LlavaNextModel, LlavaNextProcessor

    llm = LLM(str(e5v), dtype="float32")
    images = [picture(70, 40, 0), picture(30, 60, 1)]  # different anyres grids
    prompt = {"prompt": IMAGE_PROMPT.replace("<image>", "<image><image>"),
              "multi_modal_data": {"image": images}}
    (record,) = llm.engine.images.records([prompt], "embed", [None])
    processor = LlavaNextProcessor.from_pretrained(e5v)
    model = LlavaNextModel.from_pretrained(e5v, dtype=torch.float32).eval()
    batch = processor(text=[prompt["prompt"]], images=images, return_tensors="pt")
    with torch.no_grad():  # the tower's output: [real crops, tokens per crop, hidden]
        tower = model.get_image_features(batch["pixel_values"], batch["image_sizes"])
    crops, per_crop = tower.last_hidden_state.shape[:2]
    # It was the image count (2): the rows of pixel_values.
    assert record.multimodal.patches == crops * per_crop
    assert record.cost == len(record.token_ids) + crops * per_crop
