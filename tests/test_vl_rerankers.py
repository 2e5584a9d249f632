"""Vision-language rerankers (jina-reranker-m0's JinaVLForRanking): parity with the
authors' published forward (their prompt format, score token and sigmoid(score - 2.65))
run on transformers' Qwen2VLModel and Qwen2VLProcessor, on a tiny random checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cenote import LLM
from tests.colpali_factories import build_tiny_jina_reranker_m0

IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"


@pytest.fixture(scope="module")
def jina_m0(tmp_path_factory):
    return build_tiny_jina_reranker_m0(tmp_path_factory.mktemp("jina-m0"))


@pytest.fixture(scope="module")
def llm(jina_m0):
    return LLM(str(jina_m0), dtype="float32")


@pytest.fixture(scope="module")
def reference(jina_m0):
    """The authors' JinaVLForRanking.forward on transformers' classes: Qwen2-VL's last
    hidden state of the last token (the appended score token 100), ``score``, then
    ``sigmoid(logit - 2.65)``; inputs from transformers' Qwen2VLProcessor."""
    from safetensors.torch import load_file
    from transformers import AutoImageProcessor, AutoTokenizer, Qwen2VLModel

    model = Qwen2VLModel.from_pretrained(jina_m0, dtype=torch.float32).eval()
    state = load_file(str(jina_m0 / "model.safetensors"))
    hidden = model.config.text_config.hidden_size
    score = torch.nn.Sequential(torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
                                torch.nn.Linear(hidden, 1))
    score.load_state_dict({k.removeprefix("score."): v for k, v in state.items()
                           if k.startswith("score.")})
    tokenizer = AutoTokenizer.from_pretrained(jina_m0)
    images = AutoImageProcessor.from_pretrained(jina_m0)

    def compute_score(query, document):
        def part(label, item):
            return f"**{label}**:\n{IMAGE if isinstance(item, Image.Image) else item}"

        text = part("Document", document) + "\n" + part("Query", query)
        pictures = [x for x in (document, query) if isinstance(x, Image.Image)]
        pixel_values = grid = None
        if pictures:
            processed = images(images=pictures, return_tensors="pt")
            pixel_values, grid = processed["pixel_values"], processed["image_grid_thw"]
            pieces = text.split("<|image_pad|>")
            counts = (grid.prod(-1) // images.merge_size**2).tolist()
            text = pieces[0] + "".join("<|image_pad|>" * n + p
                                       for n, p in zip(counts, pieces[1:], strict=True))
        ids = torch.tensor([tokenizer(text)["input_ids"] + [100]])
        types = (ids == model.config.image_token_id).int()
        with torch.no_grad():
            last = model(input_ids=ids, mm_token_type_ids=types, pixel_values=pixel_values,
                         image_grid_thw=grid).last_hidden_state[0, -1]
            return torch.sigmoid(score(last)[0] - 2.65).item()

    return compute_score


def page(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


def image_prompt(image: Image.Image) -> dict:
    return {"prompt": "", "multi_modal_data": {"image": image}}


def test_text_query_against_image_and_text_documents(llm, reference):
    documents = [page(56, 84, 0), "a text document", page(112, 56, 1)]
    ours = [o.outputs.score for o in llm.score(
        "slm markdown", [image_prompt(d) if isinstance(d, Image.Image) else d
                         for d in documents])]
    theirs = [reference("slm markdown", d) for d in documents]
    assert ours == pytest.approx(theirs, abs=1e-5)
    assert len({round(s, 6) for s in ours}) == 3  # the documents are told apart


def test_image_query_against_image_and_text_documents(llm, reference):
    query = page(56, 56, 2)
    documents = [page(84, 56, 3), "some text"]
    ours = [o.outputs.score for o in llm.score(
        image_prompt(query), [image_prompt(documents[0]), documents[1]])]
    assert ours == pytest.approx([reference(query, d) for d in documents], abs=1e-5)


def test_refusals(llm):
    with pytest.raises(ValueError, match="one image"):
        llm.score("q", [{"prompt": "", "multi_modal_data": {"image": [page(56, 56, 0)] * 2}}])
    with pytest.raises(ValueError, match="not videos"):
        llm.score("q", [{"prompt": "", "multi_modal_data": {
            "video": [np.zeros((2, 56, 56, 3), np.uint8)]}}])


def test_a_cut_into_an_image_is_refused_for_its_pair_alone(llm):
    # Before: the cut kept 8 of the image's placeholder tokens and the model raised on them.
    with pytest.raises(ValueError, match="truncate_prompt_tokens=8"):
        llm.score("q", [image_prompt(page(56, 84, 0)), "a text document"],
                  truncate_prompt_tokens=8)
    (alone,) = llm.score("q", "a text document", truncate_prompt_tokens=8)
    assert 0 < alone.outputs.score < 1
