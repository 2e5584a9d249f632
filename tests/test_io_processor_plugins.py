"""IO processor plugins (vLLM's --io-processor-plugin): the shipped BGE-M3 plugin answers
task "plugin" requests with dense and sparse vectors that equal the model's own, offline
and over HTTP; without a plugin, vLLM's refusal."""

from __future__ import annotations

import httpx
import pytest
import torch

from cenote import LLM
from tests.serving import cenote_serve

TEXT = "What is the capital of France?"


@pytest.fixture(scope="module")
def bge_m3(bge_m3_path):
    return LLM(str(bge_m3_path), dtype="float32", io_processor_plugin="bge_m3_sparse_plugin")


def expected(llm: LLM, text: str) -> tuple[list[float], dict[int, float]]:
    (dense,) = llm.embed([text], use_tqdm=False)
    (sparse,) = llm.embed_sparse([text], use_tqdm=False)
    weights = dict(zip(sparse.outputs.indices, sparse.outputs.values, strict=True))
    return dense.outputs.embedding, weights


def test_offline_the_plugin_answers_dense_and_sparse_as_the_model_gives_them(bge_m3):
    (answer,) = bge_m3.encode({"data": {"input": TEXT, "return_tokens": True}},
                              pooling_task="plugin")
    (item,) = answer.outputs.data
    dense, weights = expected(bge_m3, TEXT)
    assert item.object == "dense&sparse"
    assert torch.allclose(torch.tensor(item.dense_embedding), torch.tensor(dense), atol=1e-6)
    assert {w.token_id: w.weight for w in item.sparse_embedding} == pytest.approx(weights)
    tokenizer = bge_m3.get_tokenizer()
    for weight in item.sparse_embedding:
        assert weight.token.strip() == tokenizer.decode([weight.token_id]).strip()
    assert answer.outputs.usage.prompt_tokens == len(tokenizer(TEXT)["input_ids"])


def test_the_embed_task_picks_what_is_answered(bge_m3):
    (answer,) = bge_m3.encode({"data": {"input": [TEXT, "Berlin"], "embed_task": "sparse"}},
                              pooling_task="plugin")
    assert [d.index for d in answer.outputs.data] == [0, 1]
    assert all(d.dense_embedding is None and d.sparse_embedding is not None
               for d in answer.outputs.data)
    assert all(w.token is None for w in answer.outputs.data[0].sparse_embedding)


def test_bad_plugin_data_is_refused_by_the_plugin(bge_m3):
    with pytest.raises(ValueError):
        bge_m3.encode({"data": {"input": TEXT, "embed_task": "everything"}},
                      pooling_task="plugin")


def test_a_plugin_is_found_by_module_and_class_too(bge_m3_path):
    llm = LLM(str(bge_m3_path), dtype="float32",
              io_processor_plugin="cenote.plugins.bge_m3_sparse:BgeM3SparseEmbeddingsProcessor")
    (answer,) = llm.encode({"data": {"input": TEXT}}, pooling_task="plugin")
    assert answer.outputs.data[0].sparse_embedding


def test_an_unknown_plugin_is_refused_naming_the_installed_ones(bge_m3_path):
    with pytest.raises(ValueError, match="bge_m3_sparse_plugin"):
        LLM(str(bge_m3_path), io_processor_plugin="no_such_plugin")


def test_without_a_plugin_the_plugin_task_is_refused_as_vllm_does(minilm_fp32):
    with pytest.raises(ValueError, match="No IOProcessor plugin installed"):
        minilm_fp32.encode({"data": {"input": TEXT}}, pooling_task="plugin")


def test_the_server_answers_plugin_requests_in_vllms_shape(bge_m3_path, bge_m3):
    with cenote_serve([str(bge_m3_path), "--dtype", "float32",
                       "--io-processor-plugin", "bge_m3_sparse_plugin"]) as server:
        response = httpx.post(f"{server.url}/pooling", timeout=60, json={
            "task": "plugin", "data": {"input": TEXT, "return_tokens": True}})
        refused = httpx.post(f"{server.url}/pooling", timeout=60,
                             json={"task": "plugin", "data": "not a dict"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["request_id"].startswith("pool-") and isinstance(body["created_at"], int)
    (item,) = body["data"]["data"]
    dense, weights = expected(bge_m3, TEXT)
    assert item["dense_embedding"] == pytest.approx(dense, abs=1e-5)
    assert {w["token_id"]: w["weight"] for w in item["sparse_embedding"]} == pytest.approx(
        weights, abs=1e-5)
    assert body["data"]["usage"]["total_tokens"] == body["data"]["usage"]["prompt_tokens"] > 0
    assert refused.status_code == 400
    assert "data should be a dictionary" in refused.json()["error"]["message"]
