"""End to end, retrieval outputs through the real server: /pooling token tasks,
TEI's /embed_sparse, sparse /v1/embeddings, and /score and /rerank by MaxSim, each
equal to the offline API; bad input is a 400 and the server stays healthy."""

from __future__ import annotations

import httpx
import pytest
import torch

from cenote import LLM
from tests.serving import cenote_serve

QUERY = "what is the capital of france?"
DOCUMENTS = ["Paris is the capital of France!", "Berlin is in Germany.",
             "The Eiffel Tower stands in Paris."]


@pytest.fixture(scope="module")
def m3_server(bge_m3_path):
    with cenote_serve([str(bge_m3_path), "--dtype", "float32", "--served-model-name", "m3"]) \
            as server:
        yield server


@pytest.fixture(scope="module")
def m3_offline(bge_m3_path):
    return LLM(str(bge_m3_path), dtype="float32")


def post(server, route, **body):
    return httpx.post(f"{server.url}{route}", json=body, timeout=60)


def test_pooling_token_embed_is_as_offline(m3_server, m3_offline):
    response = post(m3_server, "/pooling", input=DOCUMENTS[:2], task="token_embed")
    assert response.status_code == 200, response.text
    outs = m3_offline.encode(DOCUMENTS[:2], pooling_task="token_embed")
    for item, out in zip(response.json()["data"], outs, strict=True):
        assert torch.allclose(torch.tensor(item["data"]), out.outputs.data, atol=1e-5)


def test_embed_sparse_answers_in_teis_shape(m3_server, m3_offline):
    response = post(m3_server, "/embed_sparse", inputs=DOCUMENTS[:2])
    assert response.status_code == 200, response.text
    outs = m3_offline.embed_sparse(DOCUMENTS[:2])
    for entries, out in zip(response.json(), outs, strict=True):
        assert [e["index"] for e in entries] == out.outputs.indices
        assert torch.allclose(torch.tensor([e["value"] for e in entries]),
                              torch.tensor(out.outputs.values), atol=1e-6)


def test_sparse_embeddings_stay_sparse_over_http(m3_server, m3_offline):
    response = post(m3_server, "/v1/embeddings", model="m3", input=QUERY,
                    embedding_type="sparse")
    assert response.status_code == 200, response.text
    vector = response.json()["data"][0]["embedding"]
    (out,) = m3_offline.embed_sparse(QUERY)
    assert vector["indices"] == out.outputs.indices
    assert len(vector["values"]) == len(vector["indices"]) < 50  # not vocabulary-sized


def test_rerank_scores_by_maxsim_as_offline(m3_server, m3_offline):
    response = post(m3_server, "/rerank", query=QUERY, documents=DOCUMENTS, top_n=2)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    expected = [o.outputs.score for o in m3_offline.score(QUERY, DOCUMENTS)]
    assert len(results) == 2
    assert results[0]["index"] == max(range(3), key=expected.__getitem__)
    for result in results:
        assert abs(result["relevance_score"] - expected[result["index"]]) < 1e-5


def test_score_is_as_offline(m3_server, m3_offline):
    response = post(m3_server, "/score", text_1=QUERY, text_2=DOCUMENTS)
    assert response.status_code == 200, response.text
    expected = [o.outputs.score for o in m3_offline.score(QUERY, DOCUMENTS)]
    got = [item["score"] for item in response.json()["data"]]
    assert torch.allclose(torch.tensor(got), torch.tensor(expected), atol=1e-5)


@pytest.mark.parametrize("route, body, message", [
    ("/pooling", {"input": "x", "task": "token_embed", "dimensions": 8},
     "dimensions is not a valid parameter for the 'token_embed' pooling task"),
    ("/pooling", {"input": "x", "task": "classify"}, "Unsupported task: 'classify'"),
    ("/rerank", {"query": QUERY, "documents": []}, "must not be empty"),
    ("/rerank", {"query": QUERY, "documents": ["..."], "top_n": 5}, None),
])
def test_bad_retrieval_input_is_a_400_and_the_server_stays_healthy(m3_server, route, body,
                                                                   message):
    response = post(m3_server, route, **body)
    if message is None:  # a document with nothing to match still ranks, no error
        assert response.status_code == 200, response.text
    else:
        assert response.status_code == 400, response.text
        assert message in response.json()["error"]["message"]
    assert httpx.get(f"{m3_server.url}/health").status_code == 200


@pytest.mark.parametrize("body, status, error_type, message", [
    ({"inputs": []}, 400, "Empty", "cannot be empty"),
    ({"inputs": ["word " * 600]}, 422, "Validation", "maximum context length"),
])
def test_bad_embed_sparse_input_answers_in_teis_error_shape(m3_server, body, status,
                                                            error_type, message):
    response = post(m3_server, "/embed_sparse", **body)
    assert response.status_code == status, response.text
    assert response.json()["error_type"] == error_type
    assert message in response.json()["error"]
    assert httpx.get(f"{m3_server.url}/health").status_code == 200


def test_sparse_on_a_dense_only_model_names_what_it_serves():
    with cenote_serve([]) as server:  # the bundled MiniLM: dense vectors only
        response = post(server, "/v1/embeddings", input="hello", embedding_type="sparse")
        assert response.status_code == 400
        assert "encode, embed, token_embed" in response.json()["error"]["message"]
        response = post(server, "/embed_sparse", inputs="hello")
        assert response.status_code == 424  # TEI's answer for a model without the route
        assert httpx.get(f"{server.url}/health").status_code == 200


@pytest.mark.parametrize("fixture", ["colbert_path", "splade_path"])
def test_a_model_without_a_dense_vector_serves(fixture, request):
    """ColBERT and SPLADE folders have no embed task: the server still starts (its
    warm-up runs the model's own output) and answers with it."""
    path = request.getfixturevalue(fixture)
    with cenote_serve([str(path), "--dtype", "float32"]) as server:
        response = post(server, "/rerank", query=QUERY, documents=DOCUMENTS)
        assert response.status_code == 200, response.text
        offline = LLM(str(path), dtype="float32")
        expected = [o.outputs.score for o in offline.score(QUERY, DOCUMENTS)]
        for result in response.json()["results"]:
            assert abs(result["relevance_score"] - expected[result["index"]]) < 1e-3
