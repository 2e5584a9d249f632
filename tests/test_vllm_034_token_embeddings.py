"""``/v1/embeddings`` on a server whose pooler task is token_embed answers vLLM 0.34's
``TokenEmbeddingResponse``: per input its token vectors (what ``/pooling`` with task
token_embed gives), or with ``late_chunking_params`` one vector per chunk of them and
``late_chunking`` saying where each chunk lies; what late chunking cannot take is a 400."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient

from cenote import LLM, PoolerConfig
from cenote.engine.async_engine import AsyncPoolingEngine
from cenote.server.app import build_app
from cenote.server.context import ServedModel

TEXTS = ["passage: Berlin has museums. They display art.", "Short."]


@pytest.fixture(scope="module")
def api(minilm_path, minilm_fp32):
    token_embed = LLM(str(minilm_path), dtype="float32",
                      pooler_config=PoolerConfig(task="token_embed"), max_model_len=64)
    app = build_app([ServedModel(["tokens"], AsyncPoolingEngine(token_embed.engine)),
                     ServedModel(["minilm"], AsyncPoolingEngine(minilm_fp32.engine))])
    with TestClient(app) as client:
        yield client


def post(api, path: str, **body):
    return api.post(path, json={"model": "tokens", **body})


def test_embeddings_are_the_token_vectors_of_pooling(api):
    response = post(api, "/v1/embeddings", input=TEXTS, use_activation=False)
    assert response.status_code == 200, response.text
    result = response.json()
    reference = post(api, "/pooling", input=TEXTS, task="token_embed",
                     use_activation=False).json()
    assert result["object"] == "list" and result["id"].startswith("embd-")
    assert result["usage"] == reference["usage"]
    for i, (item, raw) in enumerate(zip(result["data"], reference["data"], strict=True)):
        assert item["index"] == i and item["object"] == "embedding"
        assert "late_chunking" not in item
        assert torch.allclose(torch.tensor(item["embedding"]), torch.tensor(raw["data"]),
                              atol=1e-5)


@pytest.mark.parametrize("chunk_size, normalize", [(1, False), (5, True), (2**63 - 1, False)])
def test_late_chunking_gives_the_mean_of_each_chunk_and_its_ranges(api, chunk_size, normalize):
    raw = post(api, "/pooling", input=TEXTS, task="token_embed", use_activation=False).json()
    response = post(api, "/v1/embeddings", input=TEXTS, use_activation=normalize,
                    late_chunking_params={"chunk_size": chunk_size})
    assert response.status_code == 200, response.text
    for tokens, item in zip(raw["data"], response.json()["data"], strict=True):
        expected = torch.stack([part.mean(0) for part in
                                torch.tensor(tokens["data"]).split(chunk_size)])
        if normalize:
            expected = F.normalize(expected, dim=-1)
        assert torch.allclose(torch.tensor(item["embedding"]), expected, atol=1e-5)
        metadata = item["late_chunking"]
        assert metadata["chunk_size"] == chunk_size
        assert metadata["input_tokens"] == len(tokens["data"])
        assert metadata["strategy"] == "fixed_tokens"
        assert len(metadata["chunks"]) == len(expected)
        assert metadata["chunks"][0]["token_range"][0] == 0


@pytest.mark.parametrize("overrides", [
    {"input": [101, 2023, 102]},
    {"input": ""},
    {"truncate_prompt_tokens": 4},
    {"padding": "max_length"},
    {"input": "word " * 100},
    {"late_chunking_params": {"chunk_size": 2**64}},
    {"late_chunking_params": {"chunk_size": 0}},
    {"encoding_format": "base64"},
    {"dimensions": 8},
])
def test_what_late_chunking_cannot_take_is_a_400(api, overrides):
    response = post(api, "/v1/embeddings", **{"input": TEXTS[0],
                                              "late_chunking_params": {"chunk_size": 5},
                                              **overrides})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"]


def test_an_embedding_server_refuses_late_chunking_on_embeddings(api):
    response = api.post("/v1/embeddings", json={"model": "minilm", "input": TEXTS[0],
                                                "late_chunking_params": {"chunk_size": 5}})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "late_chunking_params"
    plain = api.post("/v1/embeddings", json={"model": "minilm", "input": TEXTS[0]}).json()
    assert isinstance(plain["data"][0]["embedding"][0], float)


def test_late_chunking_params_are_mutable_and_checked_again_when_sent(minilm_fp32):
    from cenote import LateChunkingParams, PoolingParams, VLLMValidationError

    chunking = LateChunkingParams(1)
    params = PoolingParams(late_chunking_params=chunking)
    chunking.chunk_size = 2**64  # as vLLM's test does: changed after the params were made
    with pytest.raises(VLLMValidationError, match="positive integer"):
        minilm_fp32.encode("hello", params, pooling_task="token_embed")
    chunking.chunk_size = 2
    (out,) = minilm_fp32.encode("hello world", params, pooling_task="token_embed")
    assert out.late_chunking.chunk_size == 2


def test_a_refused_offline_request_leaves_nothing_in_flight(minilm_fp32):
    from cenote import LateChunkingParams, PoolingParams, VLLMValidationError

    with pytest.raises(VLLMValidationError):
        minilm_fp32.encode("hello", PoolingParams(late_chunking_params=LateChunkingParams(1)),
                           pooling_task="embed")
    assert minilm_fp32.llm_engine.has_unfinished_requests() is False
