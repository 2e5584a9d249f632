"""text-embeddings-inference's API on a real ``cenote serve``, driven by TEI's clients:
huggingface_hub's ``InferenceClient``, LlamaIndex's ``TextEmbeddingsInference`` and
Haystack's ``HuggingFaceAPITextEmbedder`` / ``HuggingFaceTEIRanker``, and by httpx
for the shapes and errors. Answers are checked against cenote's own routes
(``/v1/embeddings``, ``/classify``, vLLM's ``/rerank``) for the same inputs.

Three servers start once for the module: the bundled MiniLM (an embedder), a
cross-encoder (TEI's "reranker") and a three-label classifier.
"""

from __future__ import annotations

import math

import httpx
import numpy as np
import pytest

from tests.serving import cenote_serve

TEXTS = ["The quick brown fox jumps over the lazy dog.",
         "Embeddings map sentences to vectors.",
         "A cat sat on the mat."]
QUERY = "Where did the cat sit?"


@pytest.fixture(scope="module")
def embedder():
    with cenote_serve([]) as server:  # the bundled all-MiniLM-L6-v2
        yield server


@pytest.fixture(scope="module")
def reranker(cross_encoder_path):
    with cenote_serve([str(cross_encoder_path), "--dtype", "float32"]) as server:
        yield server


@pytest.fixture(scope="module")
def classifier(classifier_path):
    with cenote_serve([str(classifier_path), "--dtype", "float32"]) as server:
        yield server


@pytest.fixture
def hub_client(monkeypatch):
    """huggingface_hub's InferenceClient, allowed to reach the local server: its offline
    switch (HF_HUB_OFFLINE, set for the whole suite) refuses every URL, even 127.0.0.1."""
    from huggingface_hub import InferenceClient, constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return InferenceClient


def post(server, path: str, body) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, timeout=60)


def openai_vectors(server, texts: list[str]) -> np.ndarray:
    response = post(server, "/v1/embeddings", {"input": texts})
    assert response.status_code == 200, response.text
    return np.array([d["embedding"] for d in response.json()["data"]])


def cosines(a, b) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def assert_tei_error(response: httpx.Response, status: int, error_type: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "error_type"}, body
    assert body["error_type"] == error_type
    return body["error"]


# ---- embeddings ---------------------------------------------------------


def test_inference_client_feature_extraction_matches_v1_embeddings(embedder, hub_client):
    client = hub_client(base_url=embedder.url)
    vectors = np.stack([client.feature_extraction(text)[0] for text in TEXTS])
    assert vectors.shape == (3, 384)
    assert cosines(vectors, openai_vectors(embedder, TEXTS)).min() >= 0.9999


def test_inference_client_sentence_similarity_is_the_cosine_of_the_embeddings(embedder,
                                                                              hub_client):
    scores = hub_client(base_url=embedder.url).sentence_similarity(TEXTS[0], TEXTS[1:])
    vectors = openai_vectors(embedder, TEXTS)
    np.testing.assert_allclose(scores, cosines(vectors[:1], vectors[1:]), atol=1e-4)


def test_llamaindex_text_embeddings_inference_matches_v1_embeddings(embedder):
    from llama_index.embeddings.text_embeddings_inference import TextEmbeddingsInference

    model = TextEmbeddingsInference(model_name="minilm", base_url=embedder.url)
    vectors = model.get_text_embedding_batch(TEXTS)
    assert cosines(vectors, openai_vectors(embedder, TEXTS)).min() >= 0.9999
    query = model.get_query_embedding(QUERY)
    assert cosines(query, openai_vectors(embedder, [QUERY])[0]) >= 0.9999


def test_haystack_text_embedder_matches_v1_embeddings(embedder, hub_client):
    from haystack_integrations.components.embedders.huggingface_api import (
        HuggingFaceAPITextEmbedder,
    )

    component = HuggingFaceAPITextEmbedder(api_type="text_embeddings_inference",
                                           api_params={"url": embedder.url}, token=None)
    vector = component.run(text=TEXTS[0])["embedding"]
    assert cosines(vector, openai_vectors(embedder, TEXTS[:1])[0]) >= 0.9999


def test_embed_normalises_by_default_and_not_when_asked(embedder):
    (normalised,) = post(embedder, "/embed", {"inputs": TEXTS[0]}).json()
    (raw,) = post(embedder, "/embed", {"inputs": [TEXTS[0]], "normalize": False}).json()
    assert np.linalg.norm(normalised) == pytest.approx(1, abs=1e-3)
    assert np.linalg.norm(raw) > 1.5
    assert cosines(normalised, raw) >= 0.9999


def test_embed_takes_token_ids_as_tei_does(embedder):
    ids = httpx.post(f"{embedder.url}/tokenize", json={"prompt": TEXTS[0]}).json()["tokens"]
    by_ids = post(embedder, "/embed", {"inputs": ids}).json()
    mixed = post(embedder, "/embed", {"inputs": [ids, TEXTS[1]]}).json()
    assert len(by_ids) == 1 and len(mixed) == 2
    assert cosines(by_ids[0], openai_vectors(embedder, TEXTS[:1])[0]) >= 0.9999
    assert cosines(mixed[1], openai_vectors(embedder, TEXTS[1:2])[0]) >= 0.9999


def test_embed_refuses_a_long_input_unless_truncate_and_then_keeps_the_asked_end(embedder):
    words = " ".join(f"word{i}" for i in range(400))
    assert_tei_error(post(embedder, "/embed", {"inputs": words}), 422, "Validation")
    right = post(embedder, "/embed", {"inputs": words, "truncate": True}).json()[0]
    left = post(embedder, "/embed", {"inputs": words, "truncate": True,
                                     "truncation_direction": "Left"}).json()[0]
    reference = openai_vectors(embedder, [words[:200]])[0]  # the opening words
    assert cosines(right, reference) > cosines(left, reference)


def test_embed_all_answers_one_row_per_token(embedder):
    ids = httpx.post(f"{embedder.url}/tokenize", json={"prompt": TEXTS[2]}).json()["tokens"]
    (rows,) = post(embedder, "/embed_all", {"inputs": TEXTS[2]}).json()
    assert np.array(rows).shape == (len(ids), 384)


def test_similarity_route_answers_one_cosine_per_sentence(embedder):
    body = {"inputs": {"source_sentence": QUERY, "sentences": TEXTS}}
    scores = post(embedder, "/similarity", body).json()
    vectors = openai_vectors(embedder, [QUERY, *TEXTS])
    np.testing.assert_allclose(scores, cosines(vectors[:1], vectors[1:]), atol=1e-4)


def test_root_route_embeds_for_an_embedding_model(embedder):
    assert post(embedder, "/", {"inputs": TEXTS}).json() == \
        post(embedder, "/embed", {"inputs": TEXTS}).json()


def test_info_describes_the_embedding_model(embedder):
    info = httpx.get(f"{embedder.url}/info").json()
    assert info["model_id"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert info["model_type"] == {"embedding": {"pooling": "mean"}}
    assert info["max_input_length"] == 256
    assert info["max_client_batch_size"] == 2048
    assert info["auto_truncate"] is False
    assert {"model_dtype", "max_batch_tokens", "version", "served_model_name"} <= set(info)


@pytest.mark.parametrize("path, body, status, error_type", [
    ("/embed", {"inputs": []}, 400, "Empty"),
    ("/embed", {"inputs": ""}, 400, "Empty"),
    ("/embed", {"inputs": 7}, 422, "Validation"),
    ("/embed", {"texts": ["no inputs"]}, 422, "Validation"),
    ("/embed", {"inputs": ["a"] * 2049}, 422, "Validation"),
    ("/embed", {"inputs": "x", "prompt_name": "nope"}, 422, "Validation"),
    ("/embed", {"inputs": "x", "truncation_direction": "Up"}, 422, "Validation"),
    ("/similarity", {"inputs": {"source_sentence": "a", "sentences": []}}, 400, "Empty"),
    ("/predict", {"inputs": "an embedder does not classify"}, 424, "Backend"),
    ("/embed_sparse", {"inputs": "dense only"}, 424, "Backend"),
    ("/rerank", {"query": "q", "texts": []}, 400, "Empty"),
])
def test_tei_routes_answer_errors_in_teis_shape(embedder, path, body, status, error_type):
    assert_tei_error(post(embedder, path, body), status, error_type)
    assert httpx.get(f"{embedder.url}/health").status_code == 200


def test_a_body_that_is_not_json_is_a_tei_validation_error(embedder):
    response = httpx.post(f"{embedder.url}/embed", content=b"{not json",
                          headers={"Content-Type": "application/json"})
    assert_tei_error(response, 422, "Validation")


def test_engine_failures_take_teis_statuses():
    from cenote.engine.async_engine import BatchFailedError, EngineStoppedError, QueueFullError
    from cenote.server.routes.tei import tei_error

    full = tei_error(QueueFullError("queue full", retry_after_s=3))
    assert (full.status_code, full.headers["retry-after"]) == (429, "3")
    assert tei_error(EngineStoppedError("stopped")).status_code == 503
    assert tei_error(BatchFailedError("model raised")).status_code == 424
    assert tei_error(RuntimeError("a bug")).status_code == 500


# ---- reranker -----------------------------------------------------------


def vllm_rerank(server, documents: list[str]) -> dict[int, float]:
    response = post(server, "/rerank", {"query": QUERY, "documents": documents})
    assert response.status_code == 200, response.text
    return {r["index"]: r["relevance_score"] for r in response.json()["results"]}


def test_tei_rerank_answers_a_bare_list_sorted_by_score(reranker):
    ranks = post(reranker, "/rerank", {"query": QUERY, "texts": TEXTS}).json()
    expected = vllm_rerank(reranker, TEXTS)
    assert [r["index"] for r in ranks] == sorted(expected, key=expected.get, reverse=True)
    for rank in ranks:
        assert set(rank) == {"index", "score"}
        assert rank["score"] == pytest.approx(expected[rank["index"]], abs=1e-5)


def test_tei_rerank_returns_texts_and_raw_scores_when_asked(reranker):
    ranks = post(reranker, "/rerank", {"query": QUERY, "texts": TEXTS, "return_text": True,
                                       "raw_scores": True}).json()
    expected = vllm_rerank(reranker, TEXTS)
    for rank in ranks:
        assert rank["text"] == TEXTS[rank["index"]]
        sigmoid = 1 / (1 + math.exp(-rank["score"]))
        assert sigmoid == pytest.approx(expected[rank["index"]], abs=1e-5)


def test_haystack_tei_ranker_orders_documents_as_vllm_rerank(reranker):
    from haystack import Document
    from haystack_integrations.components.rankers.huggingface_api import HuggingFaceTEIRanker

    ranker = HuggingFaceTEIRanker(url=reranker.url, top_k=2, token=None)
    documents = ranker.run(query=QUERY, documents=[Document(content=t) for t in TEXTS])
    expected = vllm_rerank(reranker, TEXTS)
    best = sorted(expected, key=expected.get, reverse=True)[:2]
    assert [d.content for d in documents["documents"]] == [TEXTS[i] for i in best]


def test_vllm_rerank_with_return_documents_false_leaves_documents_out(reranker):
    body = {"query": QUERY, "documents": TEXTS, "return_documents": False}
    results = post(reranker, "/rerank", body).json()["results"]
    assert results and all(set(r) == {"index", "relevance_score"} for r in results)


def test_predict_scores_a_pair_on_a_reranker(reranker):
    predictions = post(reranker, "/predict", {"inputs": [QUERY, TEXTS[2]]}).json()
    labels = httpx.get(f"{reranker.url}/info").json()["model_type"]["reranker"]["id2label"]
    assert [p["label"] for p in predictions] == [labels["0"]]
    assert predictions[0]["score"] == pytest.approx(vllm_rerank(reranker, TEXTS[2:])[0],
                                                    abs=1e-5)


def test_root_route_reranks_and_info_says_reranker(reranker):
    body = {"query": QUERY, "texts": TEXTS}
    assert post(reranker, "/", body).json() == post(reranker, "/rerank", body).json()
    assert set(httpx.get(f"{reranker.url}/info").json()["model_type"]) == {"reranker"}


# ---- classifier ---------------------------------------------------------


def classify(server, texts: list[str]) -> list[list[float]]:
    response = post(server, "/classify", {"input": texts})
    assert response.status_code == 200, response.text
    return [d["probs"] for d in response.json()["data"]]


def test_predict_answers_every_label_highest_first(classifier):
    predictions = post(classifier, "/predict", {"inputs": TEXTS[0]}).json()
    (probs,) = classify(classifier, TEXTS[:1])
    assert [p["score"] for p in predictions] == pytest.approx(sorted(probs, reverse=True),
                                                              abs=1e-5)
    best = max(range(3), key=probs.__getitem__)
    assert predictions[0]["label"] == f"LABEL_{'ABC'[best]}"


def test_predict_batch_answers_a_list_per_input(classifier):
    batch = post(classifier, "/predict", {"inputs": [[t] for t in TEXTS]}).json()
    assert len(batch) == 3
    for predictions, probs in zip(batch, classify(classifier, TEXTS), strict=True):
        assert max(p["score"] for p in predictions) == pytest.approx(max(probs), abs=1e-5)


def test_predict_raw_scores_are_the_logits(classifier):
    predictions = post(classifier, "/predict", {"inputs": TEXTS[1], "raw_scores": True}).json()
    logits = {p["label"]: p["score"] for p in predictions}
    exps = {label: math.exp(v) for label, v in logits.items()}
    (probs,) = classify(classifier, TEXTS[1:2])
    for k, label in enumerate(("LABEL_A", "LABEL_B", "LABEL_C")):
        assert exps[label] / sum(exps.values()) == pytest.approx(probs[k], abs=1e-5)


def test_inference_client_text_classification_gets_the_top_label(classifier, hub_client):
    # TEI answers one input with a flat list; the client keeps its first (the best) item.
    top = hub_client(base_url=classifier.url).text_classification(TEXTS[0])
    predictions = post(classifier, "/predict", {"inputs": TEXTS[0]}).json()
    assert (top.label, top.score) == (predictions[0]["label"],
                                      pytest.approx(predictions[0]["score"], abs=1e-6))


def test_info_lists_the_classifier_labels(classifier):
    model_type = httpx.get(f"{classifier.url}/info").json()["model_type"]
    assert model_type == {"classifier": {
        "id2label": {"0": "LABEL_A", "1": "LABEL_B", "2": "LABEL_C"},
        "label2id": {"LABEL_A": 0, "LABEL_B": 1, "LABEL_C": 2}}}


def test_a_text_pair_needs_a_one_label_model(classifier):
    response = post(classifier, "/predict", {"inputs": [TEXTS[0], TEXTS[1]]})
    assert_tei_error(response, 424, "Backend")
