"""Score templates (vLLM's rerankers trained on a prompt): a chat template receives each
pair as the messages ``query`` and ``document``; ``instruction`` and
``chat_template_kwargs`` reach it; ``max_tokens_per_query`` / ``max_tokens_per_doc`` cut
each side first."""

from __future__ import annotations

import httpx
import pytest

from cenote import LLM
from cenote.inputs.score_prompts import truncate_text_to_tokens
from tests.serving import cenote_serve

TEMPLATE = ("{% if instruction %}Instruct: {{ instruction }} {% endif %}"
            "Query: {{ messages[0]['content'] }} Document: {{ messages[1]['content'] }}")
QUERY = "how do glaciers form"
DOCS = ["Snow piles up over centuries and is pressed into ice.",
        "The stock market closed higher on Friday."]


@pytest.fixture(scope="module")
def reranker(cross_encoder_path):
    return LLM(str(cross_encoder_path), dtype="float32")


def classify_score(llm: LLM, text: str) -> float:
    (out,) = llm.classify([text], use_tqdm=False)
    return out.outputs.probs[0]


def test_a_chat_template_scores_the_rendered_pair_as_one_text(reranker):
    scores = [o.outputs.score for o in reranker.score(QUERY, DOCS, chat_template=TEMPLATE,
                                                      use_tqdm=False)]
    expected = [classify_score(reranker, f"Query: {QUERY} Document: {d}") for d in DOCS]
    assert scores == pytest.approx(expected, abs=1e-5)
    plain = [o.outputs.score for o in reranker.score(QUERY, DOCS, use_tqdm=False)]
    assert scores != pytest.approx(plain, abs=1e-4)  # the template changed the input


def test_template_kwargs_reach_the_template(reranker):
    (out,) = reranker.score(QUERY, DOCS[:1], chat_template=TEMPLATE, use_tqdm=False,
                            chat_template_kwargs={"instruction": "judge relevance"})
    expected = classify_score(reranker,
                              f"Instruct: judge relevance Query: {QUERY} Document: {DOCS[0]}")
    assert out.outputs.score == pytest.approx(expected, abs=1e-5)


def test_a_text_is_cut_after_its_first_tokens_at_a_token_boundary(reranker):
    hf = reranker.get_tokenizer()
    text = "Snow piles up over centuries and is pressed into ice."
    cut = truncate_text_to_tokens(text, hf, 4)
    assert len(hf(cut, add_special_tokens=False)["input_ids"]) == 4
    assert text.startswith(cut) and cut == "Snow piles up over"
    assert truncate_text_to_tokens(text, hf, 100) == text


@pytest.fixture(scope="module")
def server(cross_encoder_path, tmp_path_factory):
    template = tmp_path_factory.mktemp("template") / "score.jinja"
    template.write_text(TEMPLATE)
    with cenote_serve([str(cross_encoder_path), "--dtype", "float32",
                       "--chat-template", str(template)]) as running:
        yield running


def test_the_server_scores_through_its_chat_template_with_the_instruction(server, reranker):
    for path, body in (("/score", {"text_1": QUERY, "text_2": DOCS}),
                       ("/rerank", {"query": QUERY, "documents": DOCS})):
        response = httpx.post(f"{server.url}{path}", timeout=60,
                              json={**body, "instruction": "judge relevance"})
        assert response.status_code == 200, response.text
        answer = response.json()
        got = ({d["index"]: d["score"] for d in answer["data"]} if path == "/score" else
               {r["index"]: r["relevance_score"] for r in answer["results"]})
        expected = reranker.score(QUERY, DOCS, chat_template=TEMPLATE, use_tqdm=False,
                                  chat_template_kwargs={"instruction": "judge relevance"})
        assert [got[i] for i in range(2)] == pytest.approx(
            [o.outputs.score for o in expected], abs=1e-5)


def test_max_tokens_per_doc_cuts_each_document_before_the_pair_is_made(server, reranker):
    response = httpx.post(f"{server.url}/score", timeout=60, json={
        "text_1": QUERY, "text_2": DOCS[0], "max_tokens_per_doc": 3})
    assert response.status_code == 200, response.text
    (expected,) = reranker.score(QUERY, "Snow piles up", chat_template=TEMPLATE,
                                 use_tqdm=False)
    assert response.json()["data"][0]["score"] == pytest.approx(expected.outputs.score, abs=1e-5)


@pytest.mark.parametrize("field, value, message", [
    ("max_tokens_per_doc", -1, "max_tokens_per_doc must be a non-negative integer"),
    ("max_tokens_per_query", 512, "max_tokens_per_query (512) must be less than max_model_len"),
])
def test_impossible_token_limits_are_a_400(server, field, value, message):
    response = httpx.post(f"{server.url}/rerank", timeout=60,
                          json={"query": QUERY, "documents": DOCS, field: value})
    assert response.status_code == 400
    assert message in response.json()["error"]["message"]


def test_offline_side_limits_come_in_pooling_params_extra_kwargs(reranker):
    from cenote import PoolingParams

    (cut,) = reranker.score(QUERY, DOCS[0], use_tqdm=False, pooling_params=PoolingParams(
        extra_kwargs={"max_tokens_per_doc": 3}))
    (expected,) = reranker.score(QUERY, "Snow piles up", use_tqdm=False)
    assert cut.outputs.score == pytest.approx(expected.outputs.score, abs=1e-6)
