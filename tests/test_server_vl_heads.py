"""End to end, visual document retrieval and a vision-language reranker through the real
server: /rerank and /score with page images as documents (``{"content": [image_url]}``),
each score the one offline ``LLM.score`` gives, and /pooling token_embed of a page."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image

from cenote import LLM
from tests.colpali_factories import build_tiny_colqwen2, build_tiny_jina_reranker_m0
from tests.serving import cenote_serve


def page(seed: int, size=(84, 56)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8))


def image_document(image: Image.Image) -> dict:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    return {"content": [{"type": "image_url", "image_url": {"url": url}}]}


PAGES = [page(0), page(1, (56, 84)), page(2)]


@pytest.fixture(scope="module", params=["colqwen2", "jina-m0"])
def model(request, tmp_path_factory):
    build = build_tiny_colqwen2 if request.param == "colqwen2" else build_tiny_jina_reranker_m0
    return build(tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module")
def server(model):
    with cenote_serve([str(model), "--dtype", "float32", "--served-model-name", "m"]) as running:
        yield running


@pytest.fixture(scope="module")
def offline(model):
    return LLM(str(model), dtype="float32")


@pytest.fixture(scope="module")
def offline_scores(offline):
    llm = offline
    docs = [{"prompt": "", "multi_modal_data": {"image": p}} for p in PAGES] + ["a text page"]
    return [o.outputs.score for o in llm.score("revenue table", docs)]


def test_rerank_page_images_and_text(server, offline_scores):
    documents = [image_document(p) for p in PAGES] + ["a text page"]
    answer = httpx.post(f"{server.url}/rerank", timeout=120, json={
        "model": "m", "query": "revenue table", "documents": documents})
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    by_index = {r["index"]: r["relevance_score"] for r in results}
    assert [by_index[i] for i in range(4)] == pytest.approx(offline_scores, rel=1e-4)
    ranked = [r["relevance_score"] for r in results]
    assert ranked == sorted(ranked, reverse=True)


def test_score_page_images(server, offline_scores):
    answer = httpx.post(f"{server.url}/score", timeout=120, json={
        "model": "m", "text_1": "revenue table",
        "text_2": [image_document(p) for p in PAGES]})
    assert answer.status_code == 200, answer.text
    scores = [d["score"] for d in answer.json()["data"]]
    assert scores == pytest.approx(offline_scores[:3], rel=1e-4)


def test_bad_image_is_a_400(server):
    bad = {"content": [{"type": "image_url",
                        "image_url": {"url": "data:image/png;base64,bm90IGFuIGltYWdl"}}]}
    answer = httpx.post(f"{server.url}/rerank", timeout=60, json={
        "model": "m", "query": "q", "documents": [bad]})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["message"]
    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200


def test_pooling_token_embed_of_a_page(server, model, offline):
    if "jina" in model.name:
        pytest.skip("a reranker has no token_embed")
    document = image_document(PAGES[0])
    answer = httpx.post(f"{server.url}/pooling", timeout=120, json={
        "model": "m", "task": "token_embed",
        "messages": [{"role": "user", "content": document["content"]}]})
    assert answer.status_code == 200, answer.text
    vectors = np.array(answer.json()["data"][0]["data"])
    expected = offline.encode([{"prompt": "", "multi_modal_data": {"image": PAGES[0]}}],
                              pooling_task="token_embed")[0].outputs.data.numpy()
    np.testing.assert_allclose(vectors, expected, atol=1e-5)


def test_qwen3_vl_reranker_served_as_the_recipe(tmp_path):
    """Qwen3-VL-Reranker served as vLLM's recipe: --hf-overrides, the template as
    --chat-template; /rerank with a page image equals offline score."""
    import json

    from tests.colpali_factories import build_tiny_qwen3_vl_reranker
    from tests.test_vl_rerankers_qwen3 import OVERRIDES, TEMPLATE

    folder = build_tiny_qwen3_vl_reranker(tmp_path / "qwen3-vl-reranker")
    template = tmp_path / "reranker.jinja"
    template.write_text(TEMPLATE)
    llm = LLM(str(folder), dtype="float32", hf_overrides=OVERRIDES)
    expected = [o.outputs.score for o in llm.score(
        "revenue table", [{"prompt": "", "multi_modal_data": {"image": PAGES[0]}},
                          "a text page"], chat_template=TEMPLATE)]
    args = [str(folder), "--dtype", "float32", "--served-model-name", "m",
            "--hf-overrides", json.dumps(OVERRIDES), "--chat-template", str(template)]
    with cenote_serve(args) as running:
        answer = httpx.post(f"{running.url}/rerank", timeout=120, json={
            "model": "m", "query": "revenue table",
            "documents": [image_document(PAGES[0]), "a text page"]})
    assert answer.status_code == 200, answer.text
    by_index = {r["index"]: r["relevance_score"] for r in answer.json()["results"]}
    assert [by_index[0], by_index[1]] == pytest.approx(expected, abs=1e-5)
