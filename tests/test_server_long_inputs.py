"""End to end, long inputs, instructions and compact vectors through the real server:
chunked processing, truncation_side and prompt_name per request, and Cohere's
/v2/embed driven by the real ``cohere`` client."""

from __future__ import annotations

import base64
import json

import httpx
import numpy as np
import pytest
import torch

from cenote import LLM, PoolingParams
from tests.serving import cenote_serve

WINDOW = 32
POOLER = {"enable_chunked_processing": True, "max_embed_len": 1000}
LONG_TEXT = " ".join(f"Section {i} describes how glaciers carve valleys over millennia."
                     for i in range(20))
TEXTS = ["how do glaciers carve valleys", "Rivers and ice both shape the land.",
         "A recipe for apple pie."]


@pytest.fixture(scope="module")
def model_path(minilm_with_prompts):
    return minilm_with_prompts()


@pytest.fixture(scope="module")
def offline(model_path):
    return LLM(str(model_path), dtype="float32", max_model_len=WINDOW,
               override_pooler_config=POOLER)


@pytest.fixture(scope="module")
def server(model_path):
    args = [str(model_path), "--dtype", "float32", "--max-model-len", str(WINDOW),
            "--override-pooler-config", json.dumps(POOLER), "--served-model-name", "prompted"]
    with cenote_serve(args) as running:
        yield running


def embeddings(server, **body):
    response = httpx.post(f"{server.url}/v1/embeddings", json={"model": "prompted", **body},
                          timeout=60)
    return response


def test_a_long_input_is_embedded_in_chunks_as_offline(server, offline):
    response = embeddings(server, input=[LONG_TEXT, TEXTS[0]])
    assert response.status_code == 200, response.text
    body = response.json()
    outs = offline.embed([LONG_TEXT, TEXTS[0]])
    for item, out in zip(body["data"], outs, strict=True):
        assert np.allclose(item["embedding"], out.outputs.embedding, atol=1e-5)
    assert body["usage"]["prompt_tokens"] == sum(len(o.prompt_token_ids) for o in outs)
    assert body["usage"]["prompt_tokens"] > 4 * WINDOW


def test_an_input_over_max_embed_len_is_a_400_naming_both_lengths(server):
    response = embeddings(server, input=LONG_TEXT * 5)
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert "max_embed_len) is 1000 tokens" in message and "max_model_len = 32" in message
    assert httpx.get(f"{server.url}/health").status_code == 200


def test_truncation_side_per_request_is_as_offline(server, offline):
    response = embeddings(server, input=LONG_TEXT, truncate_prompt_tokens=10,
                          truncation_side="right")
    assert response.status_code == 200, response.text
    (out,) = offline.embed(LONG_TEXT, pooling_params=PoolingParams(
        truncate_prompt_tokens=10, truncation_side="right"))
    assert np.allclose(response.json()["data"][0]["embedding"], out.outputs.embedding, atol=1e-5)
    assert response.json()["usage"]["prompt_tokens"] == 10


def test_an_unknown_truncation_side_is_a_400(server):
    response = embeddings(server, input="text", truncation_side="middle")
    assert response.status_code == 400


def test_prompt_name_per_request_is_as_offline(server, offline):
    response = embeddings(server, input=TEXTS, prompt_name="query")
    assert response.status_code == 200, response.text
    outs = offline.embed(TEXTS, prompt_name="query")
    for item, out in zip(response.json()["data"], outs, strict=True):
        assert np.allclose(item["embedding"], out.outputs.embedding, atol=1e-5)


def test_an_unknown_prompt_name_is_a_400_listing_the_names(server):
    response = embeddings(server, input=TEXTS, prompt_name="title")
    assert response.status_code == 400
    assert "'query', 'document'" in response.json()["error"]["message"]


@pytest.fixture(scope="module")
def cohere_client(server):
    cohere = pytest.importorskip("cohere")
    return cohere.ClientV2(api_key="unused", base_url=server.url)


ALL_TYPES = ["float", "int8", "uint8", "binary", "ubinary", "base64"]


def test_the_cohere_client_embeds_with_every_embedding_type(cohere_client, offline):
    from sentence_transformers.util import quantize_embeddings

    response = cohere_client.embed(texts=TEXTS, model="prompted", input_type="search_query",
                                   embedding_types=ALL_TYPES)
    floats = np.array(response.embeddings.float_, dtype=np.float32)
    expected = [o.outputs.embedding for o in offline.embed(TEXTS, prompt_name="query")]
    assert np.allclose(floats, expected, atol=1e-5)  # input_type picked the query prompt
    assert response.texts == TEXTS
    assert response.meta.billed_units.input_tokens > 0
    for kind in ("binary", "ubinary"):
        assert np.array_equal(np.array(getattr(response.embeddings, kind)),
                              quantize_embeddings(floats, precision=kind))
    decoded = [np.frombuffer(base64.b64decode(s), dtype="<f4")
               for s in response.embeddings.base64]
    assert np.allclose(decoded, floats)
    int8, uint8 = np.array(response.embeddings.int8), np.array(response.embeddings.uint8)
    assert int8.shape == floats.shape and int8.min() >= -128 and int8.max() <= 127
    # The same codes shifted by 128 (each rounded toward zero, as Sentence-Transformers).
    assert np.abs(uint8.astype(np.int16) - 128 - int8).max() <= 1


def test_int8_codes_do_not_depend_on_the_batch(cohere_client):
    alone = cohere_client.embed(texts=TEXTS[:1], model="prompted", input_type="search_document",
                                embedding_types=["int8"])
    batched = cohere_client.embed(texts=TEXTS, model="prompted", input_type="search_document",
                                  embedding_types=["int8"])
    assert alone.embeddings.int8[0] == batched.embeddings.int8[0]


def test_int8_codes_follow_the_calibrated_ranges_as_sentence_transformers(cohere_client):
    from sentence_transformers.util import quantize_embeddings

    from cenote.pooling.compact import calibration_texts

    calibration = cohere_client.embed(texts=calibration_texts(), model="prompted",
                                      input_type="classification", embedding_types=["float"])
    vectors = np.array(calibration.embeddings.float_, dtype=np.float32)
    ranges = np.stack([vectors.min(0), vectors.max(0)])
    response = cohere_client.embed(texts=TEXTS, model="prompted", input_type="classification",
                                   embedding_types=["float", "int8"])
    floats = np.array(response.embeddings.float_, dtype=np.float32)
    inside = np.clip(floats, ranges[0], ranges[1])
    expected = quantize_embeddings(inside, precision="int8", ranges=ranges)
    assert np.abs(np.array(response.embeddings.int8) - expected).max() <= 1


@pytest.mark.parametrize("body, message", [
    ({"texts": TEXTS, "embedding_types": ["float16"]}, "Unknown embedding type 'float16'"),
    ({"texts": TEXTS, "output_dimension": 128}, "does not support matryoshka"),
    ({"texts": TEXTS, "input_type": "search_everything"},
     "Unsupported input_type 'search_everything'. Supported values: classification, "
     "clustering, document, query, search_document, search_query"),
    ({"texts": [LONG_TEXT * 5], "truncate": "NONE"}, "max_embed_len) is 1000 tokens"),
    ({"images": ["data:image/png;base64,AAAA"]}, "text only"),
    ({"texts": []}, "Exactly one of texts, images, or inputs must be provided"),
])
def test_cohere_bad_input_is_a_400_naming_the_problem(server, body, message):
    response = httpx.post(f"{server.url}/v2/embed", json={"model": "prompted", **body},
                          timeout=60)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]["message"]
    assert httpx.get(f"{server.url}/health").status_code == 200


def test_cohere_truncate_end_keeps_the_first_tokens(server, offline):
    response = httpx.post(f"{server.url}/v2/embed", json={
        "model": "prompted", "texts": [LONG_TEXT], "truncate": "END", "max_tokens": 12,
        "embedding_types": ["float"]}, timeout=60)
    assert response.status_code == 200, response.text
    (out,) = offline.embed(LONG_TEXT, pooling_params=PoolingParams(
        truncate_prompt_tokens=12, truncation_side="right"))
    assert np.allclose(response.json()["embeddings"]["float"][0], out.outputs.embedding,
                       atol=1e-5)
    assert response.json()["meta"]["billed_units"]["input_tokens"] == 12


def test_cohere_inputs_with_text_parts_embed_like_texts(server):
    texts = httpx.post(f"{server.url}/v2/embed", json={"texts": TEXTS[:1]}, timeout=60).json()
    inputs = httpx.post(f"{server.url}/v2/embed", json={
        "inputs": [{"content": [{"type": "text", "text": TEXTS[0]}]}]}, timeout=60).json()
    assert torch.allclose(torch.tensor(texts["embeddings"]["float"]),
                          torch.tensor(inputs["embeddings"]["float"]))
