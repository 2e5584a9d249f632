"""ColBERT's ``embedding_mode`` per request (SPEC §12): token_embed reads a text as a
query (query marker, [MASK] expansion to the query length) or as a document (document
marker, punctuation left out), as Sentence-Transformers' ``encode_query`` and
``encode_document`` (PyLate's query and document encoding) make them; offline through
``PoolingParams(embedding_mode=...)`` and on ``/pooling``."""

from __future__ import annotations

import pytest
import torch
from fastapi.testclient import TestClient

from cenote import LLM, PoolingParams, VLLMValidationError
from cenote.engine.async_engine import AsyncPoolingEngine
from cenote.server.app import build_app
from cenote.server.context import ServedModel

QUERIES = ["what is the capital of france?", "how do glaciers carve valleys"]
DOCUMENTS = ["Paris is the capital of France.", "Glaciers carve valleys, slowly!",
             "A recipe for apple pie."]


@pytest.fixture(scope="module")
def colbert(colbert_path):
    from sentence_transformers import MultiVectorEncoder

    return LLM(str(colbert_path), dtype="float32"), MultiVectorEncoder(str(colbert_path),
                                                                      device="cpu")


def vectors(llm: LLM, texts, mode: str | None) -> list[torch.Tensor]:
    outs = llm.encode(texts, PoolingParams(embedding_mode=mode), pooling_task="token_embed")
    return [o.outputs.data for o in outs]


def assert_same(mine: list[torch.Tensor], reference) -> None:
    assert len(mine) == len(reference)
    for got, expected in zip(mine, reference, strict=True):
        assert got.shape == expected.shape
        assert torch.allclose(got, expected.float(), atol=1e-5)


def test_query_mode_is_sentence_transformers_encode_query(colbert):
    llm, st = colbert
    mine = vectors(llm, QUERIES, "query")
    assert_same(mine, st.encode_query(QUERIES))
    assert all(len(v) == 32 for v in mine)  # expanded to the query length


def test_document_mode_is_sentence_transformers_encode_document(colbert):
    llm, st = colbert
    assert_same(vectors(llm, DOCUMENTS, "document"), st.encode_document(DOCUMENTS))


def test_without_a_mode_token_embed_is_unchanged(colbert):
    llm, st = colbert
    assert_same(vectors(llm, DOCUMENTS, None), st.encode(DOCUMENTS))


def test_each_prompt_may_have_its_own_mode(colbert):
    llm, st = colbert
    params = [PoolingParams(embedding_mode="query"), PoolingParams(embedding_mode="document"),
              PoolingParams()]
    outs = llm.encode([QUERIES[0], DOCUMENTS[0], DOCUMENTS[1]], params,
                      pooling_task="token_embed")
    assert_same([o.outputs.data for o in outs],
                [st.encode_query(QUERIES[:1])[0], st.encode_document(DOCUMENTS[:1])[0],
                 st.encode(DOCUMENTS[1:2])[0]])


def test_maxsim_of_the_mode_vectors_is_the_score(colbert):
    llm, _ = colbert
    (query,) = vectors(llm, QUERIES[:1], "query")
    documents = vectors(llm, DOCUMENTS, "document")
    expected = [(query @ d.T).amax(dim=1).sum().item() for d in documents]
    scores = [o.outputs.score for o in llm.score(QUERIES[0], DOCUMENTS)]
    assert scores == pytest.approx(expected, abs=1e-4)


def test_pooling_takes_embedding_mode_as_offline(colbert):
    llm, _ = colbert
    app = build_app([ServedModel(["colbert"], AsyncPoolingEngine(llm.engine))])
    with TestClient(app) as api:
        for mode, texts in (("query", QUERIES), ("document", DOCUMENTS)):
            response = api.post("/pooling", json={"model": "colbert", "task": "token_embed",
                                                  "input": texts, "embedding_mode": mode})
            assert response.status_code == 200, response.text
            got = [torch.tensor(item["data"]) for item in response.json()["data"]]
            assert_same(got, vectors(llm, texts, mode))
        bad = api.post("/pooling", json={"model": "colbert", "task": "token_embed",
                                         "input": QUERIES, "embedding_mode": "passage"})
        assert bad.status_code == 400
        assert "embedding_mode" in bad.json()["error"]["message"]
        tokens = api.post("/pooling", json={"model": "colbert", "task": "token_embed",
                                            "input": [101, 2054, 102], "embedding_mode": "query"})
        assert tokens.status_code == 400
        assert tokens.json()["error"]["message"] == (
            "ColBERT embedding_mode requires text prompts; token prompts are not supported.")


def test_embedding_mode_needs_a_late_interaction_model(minilm_fp32):
    with pytest.raises(VLLMValidationError, match="^embedding_mode is only supported for "
                       "ColBERT / late interaction models$"):
        vectors(minilm_fp32, QUERIES, "query")


def test_embedding_mode_is_a_token_embed_parameter(colbert):
    llm, _ = colbert
    with pytest.raises(ValueError, match="embedding_mode is not a valid parameter for the "
                       "'encode' pooling task"):
        llm.encode(QUERIES, PoolingParams(embedding_mode="query"))


def test_an_unknown_embedding_mode_is_refused(colbert):
    llm, _ = colbert
    with pytest.raises(VLLMValidationError, match="embedding_mode must be 'query' or "
                       "'document'"):
        vectors(llm, QUERIES, "passage")
