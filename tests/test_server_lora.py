"""LoRA adapters over HTTP: a real ``cenote serve --enable-lora`` process, the OpenAI client
picking adapters by model name, the run-time load/unload routes and their refusals."""

from __future__ import annotations

import json
import os
import shutil

import httpx
import openai
import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient

from cenote.engine.async_engine import AsyncPoolingEngine
from cenote.server.app import build_app
from cenote.server.context import ServedModel
from tests.lora_factories import build_adapter, edit_adapter_config
from tests.serving import cenote_serve

TEXTS = ["hello world", "a somewhat longer sentence about search engines and ranking", "x"]
TARGETS = {"a1": ["query", "value"], "a2": ["key", "intermediate.dense"],
           "a3": ["query", "output.dense"], "a4": ["value"]}
RUNTIME = "VLLM_ALLOW_RUNTIME_LORA_UPDATING"


@pytest.fixture(scope="module")
def adapters(minilm_path, tmp_path_factory):
    """name -> (folder, PEFT's embeddings of TEXTS); plus "base" and a rank-16 "wide"."""
    import transformers

    base = transformers.AutoModel.from_pretrained(minilm_path, dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_path)
    root = tmp_path_factory.mktemp("served-adapters")

    @torch.no_grad()
    def embed(model) -> torch.Tensor:
        return torch.stack([F.normalize(model(**tokenizer(t, return_tensors="pt"))
                                        .last_hidden_state[0].mean(0), dim=-1) for t in TEXTS])

    made = {name: (root / name, embed(build_adapter(base, root / name, targets, seed=i)))
            for i, (name, targets) in enumerate(TARGETS.items())}
    build_adapter(base, root / "wide", ["query"], seed=9, r=16)
    made["wide"] = (root / "wide", None)
    made["base"] = (None, embed(base))
    return made


@pytest.fixture(scope="module")
def server(minilm_path, adapters):
    before = os.environ.get(RUNTIME)
    os.environ[RUNTIME] = "True"
    a2 = json.dumps({"name": "a2", "path": str(adapters["a2"][0]), "base_model_name": "mini"})
    try:
        with cenote_serve([str(minilm_path), "--served-model-name", "mini", "--dtype", "float32",
                           "--enable-lora", "--max-loras", "3", "--max-lora-rank", "8",
                           "--lora-modules", f"a1={adapters['a1'][0]}", a2]) as process:
            yield process
    finally:
        if before is None:
            os.environ.pop(RUNTIME, None)
        else:
            os.environ[RUNTIME] = before


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="none")


def _embed(client, model: str, texts=TEXTS) -> torch.Tensor:
    response = client.embeddings.create(model=model, input=texts, encoding_format="float")
    return torch.tensor([d.embedding for d in response.data])


def test_the_model_name_picks_the_adapter(client, adapters):
    for name in ("a1", "a2", "mini"):
        expected = adapters["base" if name == "mini" else name][1]
        assert F.cosine_similarity(_embed(client, name), expected).min() >= 0.9999


def test_requests_for_different_adapters_at_once(client, adapters):
    from concurrent.futures import ThreadPoolExecutor

    names = ["a1", "mini", "a2", "a1", "a2", "mini"] * 2
    with ThreadPoolExecutor(len(names)) as pool:
        got = list(pool.map(lambda n: _embed(client, n, TEXTS[1:2]), names))
    for name, vectors in zip(names, got, strict=True):
        expected = adapters["base" if name == "mini" else name][1][1:2]
        assert F.cosine_similarity(vectors, expected).min() >= 0.9999


def test_an_unknown_adapter_is_an_unknown_model(client):
    with pytest.raises(openai.NotFoundError, match="The model `a9` does not exist"):
        client.embeddings.create(model="a9", input="hi")


def test_models_lists_the_adapters_with_their_parent(client, adapters):
    cards = {m.id: m for m in client.models.list().data}
    assert cards["a1"].parent == "mini" and cards["a2"].parent == "mini"
    assert cards["a1"].root == str(adapters["a1"][0])
    assert cards["mini"].parent is None
    assert client.models.retrieve("a2").parent == "mini"


def test_score_pooling_and_rerank_use_the_adapter(server, adapters):
    expected = adapters["a1"][1]
    cosine = F.cosine_similarity(expected[0], expected[1], dim=0).item()
    score = httpx.post(f"{server.url}/score", json={"model": "a1", "text_1": TEXTS[0],
                                                    "text_2": TEXTS[1]}).json()
    assert score["data"][0]["score"] == pytest.approx(cosine, abs=1e-4)
    rerank = httpx.post(f"{server.url}/rerank", json={"model": "a1", "query": TEXTS[0],
                                                      "documents": [TEXTS[1]]}).json()
    assert rerank["results"][0]["relevance_score"] == pytest.approx(cosine, abs=1e-4)
    pooled = httpx.post(f"{server.url}/pooling", json={"model": "a1", "input": TEXTS[0],
                                                       "task": "embed"}).json()
    assert F.cosine_similarity(torch.tensor(pooled["data"][0]["data"]), expected[0],
                               dim=0) >= 0.9999


def _load(server, name, path, **extra) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/load_lora_adapter",
                      json={"lora_name": name, "lora_path": str(path), **extra}, timeout=60)


def _unload(server, name) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/unload_lora_adapter", json={"lora_name": name})


def test_load_use_and_unload_at_run_time(server, client, adapters):
    response = _load(server, "a3", adapters["a3"][0])
    assert response.status_code == 200, response.text
    assert response.text == "Success: LoRA adapter 'a3' added successfully."
    assert F.cosine_similarity(_embed(client, "a3"), adapters["a3"][1]).min() >= 0.9999
    assert "a3" in {m.id for m in client.models.list().data}
    # A 4th adapter is one more than --max-loras 3: refused, nothing evicted.
    full = _load(server, "a4", adapters["a4"][0])
    assert full.status_code == 400 and "--max-loras (3)" in full.json()["error"]["message"]
    # load_inplace replaces the weights behind a name.
    assert _load(server, "a3", adapters["a4"][0], load_inplace=True).status_code == 200
    assert F.cosine_similarity(_embed(client, "a3"), adapters["a4"][1]).min() >= 0.9999
    response = _unload(server, "a3")
    assert response.status_code == 200, response.text
    assert response.text == "Success: LoRA adapter 'a3' removed successfully."
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="a3", input="hi")
    assert F.cosine_similarity(_embed(client, "a1"), adapters["a1"][1]).min() >= 0.9999


def test_bad_loads_are_refused(server, adapters, tmp_path):
    def error(response: httpx.Response, status: int) -> str:
        assert response.status_code == status, response.text
        return response.json()["error"]["message"]

    assert "greater than max_lora_rank 8" in error(_load(server, "w", adapters["wide"][0]), 400)
    assert "already been loaded" in error(_load(server, "a1", adapters["a1"][0]), 400)
    assert "name of a served model" in error(_load(server, "mini", adapters["a3"][0]), 400)
    assert "No adapter found" in error(_load(server, "n", tmp_path / "missing"), 404)
    assert "not a PEFT adapter folder" in error(_load(server, "n", tmp_path), 400)
    dora = shutil.copytree(adapters["a3"][0], tmp_path / "dora")
    edit_adapter_config(dora, use_dora=True)
    assert "does not yet support DoRA" in error(_load(server, "d", dora), 400)
    assert "cannot be found" in error(_unload(server, "nope"), 404)
    assert error(httpx.post(f"{server.url}/v1/load_lora_adapter", json={"lora_name": "x"}),
                 400)
    # The server still serves every adapter it had.
    assert httpx.get(f"{server.url}/health").status_code == 200


def test_loading_needs_enable_lora_and_the_runtime_switch(minilm_fp32, adapters, monkeypatch):
    app = build_app([ServedModel(["minilm"], AsyncPoolingEngine(minilm_fp32.engine))])
    body = {"lora_name": "a1", "lora_path": str(adapters["a1"][0])}
    with TestClient(app) as api:
        monkeypatch.delenv(RUNTIME, raising=False)
        response = api.post("/v1/load_lora_adapter", json=body)
        assert response.status_code == 404 and RUNTIME in response.json()["error"]["message"]
        monkeypatch.setenv(RUNTIME, "True")
        response = api.post("/v1/load_lora_adapter", json=body)
        assert response.status_code == 400
        assert "--enable-lora" in response.json()["error"]["message"]
        response = api.post("/v1/embeddings", json={"model": "a1", "input": "hi"})
        assert response.status_code == 404


def test_a_request_whose_adapter_was_unloaded_while_queued_is_a_400(minilm_path, adapters):
    """A request queued with an adapter that is unloaded (and another loaded) before its
    batch runs: refused as not loaded (a LoRAError, 400), never run through the new
    adapter; a request for the base in the same batch is unaffected."""
    import asyncio

    from cenote import LLM
    from cenote.config.lora import LoRAError

    llm = LLM(str(minilm_path), dtype="float32", enable_lora=True, max_loras=2,
              max_lora_rank=8)
    engine = AsyncPoolingEngine(llm.engine)
    engine.start()
    try:
        gone = llm.engine.loras.load("gone", str(adapters["a1"][0]))
        llm.engine.loras.remove("gone")
        llm.engine.loras.load("next", str(adapters["a2"][0]))

        async def both():
            return await asyncio.gather(engine.encode(TEXTS[:1], "embed", lora_request=gone),
                                        engine.encode(TEXTS[:1], "embed"),
                                        return_exceptions=True)

        stale, base = asyncio.run(both())
        assert isinstance(stale, LoRAError) and "not loaded" in str(stale), stale
        assert F.cosine_similarity(base[0].outputs.data.float(),
                                   adapters["base"][1][0], dim=0) >= 0.9999
    finally:
        engine.shutdown()
