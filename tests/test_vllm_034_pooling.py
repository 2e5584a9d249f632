"""vLLM 0.34's request-level pooling behaviour (SPEC §12): ``/pooling``'s task checks in
vLLM's words (``task: "plugin"`` without an IO processor plugin, a task the model has
no output for), beside what cenote serves beyond vLLM; and Cohere's ``/v2/embed``:
``meta.billed_units`` with ``image_tokens``, ``truncate`` START and END, ``max_tokens``
with NONE, and an unsupported ``input_type`` refused as vLLM refuses it.

The app runs in process with four models: MiniLM (embedding), a three-label classifier,
MiniLM with "query"/"document" prompts, and a tiny CLIP (images)."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from cenote import LLM, PoolingParams
from cenote.engine.async_engine import AsyncPoolingEngine
from cenote.server.app import build_app
from cenote.server.context import ServedModel

NO_PLUGIN = ("No IOProcessor plugin installed. Please refer to the documentation and to the "
             "'prithvi_geospatial_mae_io_processor' offline inference example for more "
             "details.")
LONG_TEXT = " ".join(f"alpha{i}" for i in range(40)) + " " + " ".join(
    f"omega{i}" for i in range(40))


@pytest.fixture(scope="module")
def prompted(minilm_with_prompts):
    return LLM(str(minilm_with_prompts()), dtype="float32")


@pytest.fixture(scope="module")
def api(minilm_fp32, classifier_path, prompted, tiny_dual_encoder):
    classifier = LLM(str(classifier_path), dtype="float32")
    clip = LLM(str(tiny_dual_encoder("clip")), dtype="float32")
    app = build_app([ServedModel(["minilm"], AsyncPoolingEngine(minilm_fp32.engine)),
                     ServedModel(["classifier"], AsyncPoolingEngine(classifier.engine)),
                     ServedModel(["prompted"], AsyncPoolingEngine(prompted.engine)),
                     ServedModel(["clip"], AsyncPoolingEngine(clip.engine))])
    with TestClient(app) as client:
        yield client


def assert_400(response, message: str, param: str | None = None) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "BadRequestError"
    assert error["message"] == message
    if param is not None:
        assert error["param"] == param


def png_data_uri(seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


# ---- /pooling: task checks --------------------------------------------------------


@pytest.mark.parametrize("model", ["minilm", "classifier"])
def test_the_plugin_task_without_a_plugin_is_vllms_400(api, model):
    response = api.post("/pooling", json={"model": model, "input": "test", "task": "plugin"})
    assert_400(response, NO_PLUGIN, param="task")


@pytest.mark.parametrize("model, task, served", [
    ("minilm", "classify", "('encode', 'embed', 'token_embed')"),
    ("minilm", "token_classify", "('encode', 'embed', 'token_embed')"),
    ("minilm", "embed&token_classify", "('encode', 'embed', 'token_embed')"),
    ("classifier", "embed", "('encode', 'classify', 'token_classify')"),
    ("classifier", "token_embed", "('encode', 'classify', 'token_classify')"),
])
def test_a_task_the_model_has_no_output_for_is_vllms_unsupported_task(api, model, task,
                                                                       served):
    response = api.post("/pooling", json={"model": model, "input": "test", "task": task})
    assert_400(response, f"Unsupported task: {task!r} Supported tasks: {served}",
               param="task")


def test_an_unknown_task_is_a_400_naming_the_value(api):
    response = api.post("/pooling", json={"model": "minilm", "input": "test", "task": "nope"})
    assert response.status_code == 400
    assert "literal_error" in response.json()["error"]["message"]


@pytest.mark.parametrize("task, rows", [("token_embed", 3), ("encode", 3), ("embed", None)])
def test_tasks_cenote_serves_beyond_vllms_one_pooling_task(api, task, rows):
    # vLLM serves only the task its pooler config names; cenote every task with an output.
    response = api.post("/pooling", json={"model": "minilm", "input": "hello", "task": task})
    assert response.status_code == 200, response.text
    data = torch.tensor(response.json()["data"][0]["data"])
    assert data.shape == ((rows, 384) if rows else (384,))


def test_offline_the_plugin_task_is_refused_in_vllms_words(minilm_fp32):
    with pytest.raises(ValueError, match="^No IOProcessor plugin installed."):
        minilm_fp32.encode("test", pooling_task="plugin")


# ---- Cohere /v2/embed ---------------------------------------------------------------


def cohere(api, **body):
    return api.post("/v2/embed", json={"model": "minilm", "embedding_types": ["float"],
                                       **body})


def test_text_inputs_bill_input_tokens_and_no_image_tokens(api, minilm_fp32):
    texts = ["hello world", "glaciers carve valleys"]
    response = cohere(api, texts=texts)
    assert response.status_code == 200, response.text
    tokens = sum(len(o.prompt_token_ids) for o in minilm_fp32.embed(texts))
    assert response.json()["meta"]["billed_units"] == {"input_tokens": tokens,
                                                       "image_tokens": 0}


@pytest.mark.parametrize("body", [
    {"images": [png_data_uri(1), png_data_uri(2)]},
    {"inputs": [{"content": [{"type": "image_url", "image_url": {"url": png_data_uri(1)}}]}]},
], ids=["images", "inputs"])
def test_image_inputs_bill_image_tokens(api, body):
    response = cohere(api, model="clip", **body)
    assert response.status_code == 200, response.text
    billed = response.json()["meta"]["billed_units"]
    assert billed["input_tokens"] == 0 and billed["image_tokens"] > 0


@pytest.mark.parametrize("truncate, side", [("START", "left"), ("END", "right")])
def test_truncate_start_keeps_the_last_tokens_and_end_the_first(api, minilm_fp32, truncate,
                                                                side):
    response = cohere(api, texts=[LONG_TEXT], truncate=truncate, max_tokens=12)
    assert response.status_code == 200, response.text
    (expected,) = minilm_fp32.embed(LONG_TEXT, truncate_prompt_tokens=12,
                                    pooling_params=PoolingParams(truncation_side=side))
    got = torch.tensor(response.json()["embeddings"]["float"][0])
    assert torch.allclose(got, expected.outputs.data, atol=1e-5)
    assert response.json()["meta"]["billed_units"]["input_tokens"] == 12


def test_truncate_start_and_end_give_different_vectors(api):
    start, end = (torch.tensor(cohere(api, texts=[LONG_TEXT], truncate=t, max_tokens=12)
                               .json()["embeddings"]["float"][0]) for t in ("START", "END"))
    assert torch.nn.functional.cosine_similarity(start, end, dim=0) < 0.99


def test_truncate_none_refuses_an_input_over_max_tokens(api, minilm_fp32):
    (out,) = minilm_fp32.embed(LONG_TEXT)
    n = len(out.prompt_token_ids)
    assert_400(cohere(api, texts=[LONG_TEXT], truncate="NONE", max_tokens=12),
               f"Input of {n} tokens exceeds max_tokens=12 with truncate=NONE. Set truncate "
               "to END or START to allow truncation.")
    assert cohere(api, texts=[LONG_TEXT], truncate="NONE", max_tokens=n).status_code == 200


def test_truncate_none_refuses_an_input_over_the_model_length(api):
    response = cohere(api, texts=["word " * 600], truncate="NONE")
    assert response.status_code == 400
    assert "maximum context length" in response.json()["error"]["message"]


@pytest.mark.parametrize("model, supported", [
    ("minilm", "classification, clustering, search_document, search_query"),
    ("prompted", "classification, clustering, document, query, search_document, search_query"),
])
def test_an_unsupported_input_type_is_refused_as_vllm_refuses_it(api, model, supported):
    response = cohere(api, model=model, texts=["hello"], input_type="nonexistent_type")
    assert_400(response, f"Unsupported input_type 'nonexistent_type'. Supported values: "
                         f"{supported}")


@pytest.mark.parametrize("input_type, prompt_name", [("query", "query"),
                                                     ("search_query", "query"),
                                                     ("document", "document"),
                                                     ("search_document", "document")])
def test_input_type_picks_the_prompt_of_its_name_or_cohere_meaning(api, prompted, input_type,
                                                                   prompt_name):
    response = cohere(api, model="prompted", texts=["hello"], input_type=input_type)
    assert response.status_code == 200, response.text
    (expected,) = prompted.embed("hello", prompt_name=prompt_name)
    got = torch.tensor(response.json()["embeddings"]["float"][0])
    assert torch.allclose(got, expected.outputs.data, atol=1e-5)
