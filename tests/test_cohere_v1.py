"""Cohere's v1 API on a real ``cenote serve``, driven by the ``cohere`` client's v1
``Client``: ``/v1/embed`` (``embeddings_floats`` without ``embedding_types``,
``embeddings_by_type`` with them) and ``/v1/rerank`` with ``return_documents``.
Vectors are checked against ``/v1/embeddings`` for the same texts."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from tests.serving import cenote_serve

cohere = pytest.importorskip("cohere")

TEXTS = ["The quick brown fox jumps over the lazy dog.",
         "Embeddings map sentences to vectors.",
         "A cat sat on the mat."]
MODEL = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def server():
    with cenote_serve([]) as server:  # the bundled all-MiniLM-L6-v2
        yield server


@pytest.fixture(scope="module")
def client(server):
    return cohere.Client(api_key="unused", base_url=server.url)


def openai_vectors(server, texts: list[str]) -> np.ndarray:
    response = httpx.post(f"{server.url}/v1/embeddings", json={"input": texts}, timeout=60)
    assert response.status_code == 200, response.text
    return np.array([d["embedding"] for d in response.json()["data"]])


def cosines(a, b) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def test_embed_without_types_answers_embeddings_floats(client, server):
    response = client.embed(texts=TEXTS, model=MODEL, input_type="search_document")
    assert response.response_type == "embeddings_floats"
    assert response.texts == TEXTS
    assert cosines(response.embeddings, openai_vectors(server, TEXTS)).min() >= 0.9999
    assert response.meta.api_version.version == "1"
    assert response.meta.billed_units.input_tokens > len(TEXTS)


def test_embed_with_types_answers_embeddings_by_type(client, server):
    response = client.embed(texts=TEXTS, model=MODEL, input_type="search_query",
                            embedding_types=["float", "int8", "ubinary"])
    assert response.response_type == "embeddings_by_type"
    embeddings = response.embeddings
    assert cosines(embeddings.float_, openai_vectors(server, TEXTS)).min() >= 0.9999
    assert np.array(embeddings.int8).shape == (3, 384)
    assert np.array(embeddings.ubinary).shape == (3, 384 // 8)


def test_embed_truncate_end_keeps_the_opening_words(client, server):
    words = " ".join(f"word{i}" for i in range(400))
    (vector,) = client.embed(texts=[words], model=MODEL, input_type="classification",
                             truncate="END").embeddings
    (start,) = client.embed(texts=[words], model=MODEL, input_type="classification",
                            truncate="START").embeddings
    reference = openai_vectors(server, [words[:200]])[0]
    assert cosines(vector, reference) > cosines(start, reference)


def test_embed_truncate_none_refuses_a_long_text(server):
    body = {"texts": ["word " * 600], "truncate": "NONE"}
    response = httpx.post(f"{server.url}/v1/embed", json=body, timeout=60)
    assert response.status_code == 400
    assert "maximum context length" in response.json()["error"]["message"]


def test_rerank_return_documents_false_leaves_documents_out(client):
    response = client.rerank(query="Where did the cat sit?", documents=TEXTS, model=MODEL,
                             return_documents=False)
    assert [r.index for r in response.results][0] == 2
    assert all(r.document is None for r in response.results)
    with_documents = client.rerank(query="Where did the cat sit?", documents=TEXTS, model=MODEL)
    assert with_documents.results[0].document.text == TEXTS[2]
