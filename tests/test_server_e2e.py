"""End to end: the real ``cenote serve`` process, driven by the openai client and httpx.

Three servers start once for the module: the bundled MiniLM (no MODEL given),
a cross-encoder (through the ``cenote`` console script) and a three-label
classifier behind an API key with two served names.
"""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import torch
import torch.nn.functional as F
from prometheus_client.parser import text_string_to_metric_families

from tests.serving import cenote_serve

API_KEY = "test-secret-key"
CLASSIFIER_NAMES = ["my-classifier", "other-name"]
DEFAULT_NAME = "sentence-transformers/all-MiniLM-L6-v2"

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Embeddings map sentences to vectors.",
    "A cat sat on the mat.",
    "Stock markets fell sharply on Monday.",
]
SUBJECTS = ["The farmer", "A young pianist", "Our neighbour", "The old sailor"]
ACTIONS = ["repaired the fence", "painted a portrait", "sold fresh bread",
           "studied the stars", "planted tomatoes", "wrote a long letter",
           "crossed the river", "fed the pigeons"]
# Thirty-two distinct sentences for the concurrency test.
CLIENT_TEXTS = [f"{s} {a} on a rainy afternoon." for s in SUBJECTS for a in ACTIONS]


@pytest.fixture(scope="module")
def minilm_server():
    with cenote_serve([]) as server:  # no MODEL: the bundled all-MiniLM-L6-v2
        yield server


@pytest.fixture(scope="module")
def cross_encoder_server(cross_encoder_path):
    script = Path(sys.executable).with_name("cenote")
    command = [str(script)] if script.exists() else None
    # A vLLM command line: the model as an option, its runner and convert names, options
    # that do not apply here.
    args = ["--model", str(cross_encoder_path), "--dtype", "float32", "--runner", "pooling",
            "--convert", "classify", "--enforce-eager", "--gpu-memory-utilization", "0.9",
            "--seed", "0", "--disable-log-requests", "--tensor-parallel-size", "1"]
    with cenote_serve(args, command) as server:
        yield server


@pytest.fixture(scope="module")
def classifier_server(classifier_path):
    # vLLM's underscore spellings of two options: accepted as the dashed ones.
    args = [str(classifier_path), "--dtype", "float32", f"--api_key={API_KEY}",
            "--served_model_name", *CLASSIFIER_NAMES, "--trust-request-chat-template"]
    with cenote_serve(args) as server:
        yield server


@pytest.fixture(scope="module")
def cross_encoder_fp32(cross_encoder_path):
    from cenote import LLM

    return LLM(str(cross_encoder_path), dtype="float32")


@pytest.fixture(scope="module")
def classifier_fp32(classifier_path):
    from cenote import LLM

    return LLM(str(classifier_path), dtype="float32")


def client(server, api_key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=api_key, max_retries=0)


def post(server, path: str, body, headers: dict | None = None) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, headers=headers, timeout=60)


def assert_error(response: httpx.Response, status: int, message_part: str = "") -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    # A route that does not exist also carries FastAPI's "detail", as vLLM's answer does.
    assert set(body) == ({"error", "detail"} if status == 404 and "detail" in body
                         else {"error"})
    if "detail" in body:
        assert body["detail"] == "Not Found"
    body = body["error"]
    assert set(body) == {"message", "type", "param", "code"}
    assert body["code"] == status
    assert message_part in body["message"]
    return body


def cosine(a, b) -> float:
    return F.cosine_similarity(torch.tensor(a), torch.tensor(b), dim=0).item()


# ---- embeddings --------------------------------------------------------


def test_openai_client_default_base64_embeddings_equal_offline(minilm_server, minilm_bf16):
    response = client(minilm_server).embeddings.create(model=DEFAULT_NAME, input=TEXTS)
    offline = minilm_bf16.embed(TEXTS, use_tqdm=False)
    assert [d.index for d in response.data] == list(range(len(TEXTS)))
    for data, ref in zip(response.data, offline, strict=True):
        assert len(data.embedding) == 384
        assert cosine(data.embedding, ref.outputs.embedding) >= 0.9999


def test_openai_client_float_embeddings_equal_offline(minilm_server, minilm_bf16):
    response = client(minilm_server).embeddings.create(model=DEFAULT_NAME, input=TEXTS[0],
                                                       encoding_format="float")
    (ref,) = minilm_bf16.embed(TEXTS[0], use_tqdm=False)
    assert cosine(response.data[0].embedding, ref.outputs.embedding) >= 0.9999
    assert response.usage.prompt_tokens == len(ref.prompt_token_ids)


def test_base64_is_the_little_endian_float32_bytes_of_the_float_answer(minilm_server):
    floats = post(minilm_server, "/v1/embeddings", {"input": TEXTS[1]}).json()
    packed = post(minilm_server, "/v1/embeddings",
                  {"input": TEXTS[1], "encoding_format": "base64"}).json()
    decoded = np.frombuffer(base64.b64decode(packed["data"][0]["embedding"]), dtype="<f4")
    assert decoded.tolist() == floats["data"][0]["embedding"]


def test_embedding_response_has_the_openai_shape(minilm_server):
    body = post(minilm_server, "/v1/embeddings", {"input": TEXTS[:2], "user": "u-1"}).json()
    assert body["id"].startswith("embd-")
    assert body["object"] == "list" and body["model"] == DEFAULT_NAME
    assert isinstance(body["created"], int)
    assert [d["object"] for d in body["data"]] == ["embedding", "embedding"]
    usage = body["usage"]
    assert usage["prompt_tokens"] == usage["total_tokens"] > 0
    assert usage["completion_tokens"] == 0 and usage["prompt_tokens_details"] is None


def test_token_id_inputs_embed_like_their_text(minilm_server, minilm_bf16):
    ids = minilm_bf16.get_tokenizer()(TEXTS[2])["input_ids"]
    by_text = client(minilm_server).embeddings.create(model=DEFAULT_NAME, input=TEXTS[2])
    one = client(minilm_server).embeddings.create(model=DEFAULT_NAME, input=ids)
    many = client(minilm_server).embeddings.create(model=DEFAULT_NAME, input=[ids, ids[:4]])
    assert cosine(one.data[0].embedding, by_text.data[0].embedding) >= 0.9999
    assert len(many.data) == 2
    assert cosine(many.data[0].embedding, by_text.data[0].embedding) >= 0.9999
    assert one.usage.prompt_tokens == len(ids)


def test_normalize_false_returns_the_unnormalised_vector(minilm_server):
    raw = post(minilm_server, "/v1/embeddings",
               {"input": TEXTS[0], "normalize": False}).json()["data"][0]["embedding"]
    unit = post(minilm_server, "/v1/embeddings", {"input": TEXTS[0]}).json()["data"][0][
        "embedding"]
    assert abs(float(np.linalg.norm(unit)) - 1) < 1e-3
    assert abs(float(np.linalg.norm(raw)) - 1) > 0.01
    assert cosine(raw, unit) >= 0.9999


def test_truncate_prompt_tokens_keeps_the_last_tokens(minilm_server, minilm_bf16):
    body = post(minilm_server, "/v1/embeddings",
                {"input": TEXTS[0], "truncate_prompt_tokens": 5}).json()
    (ref,) = minilm_bf16.embed(TEXTS[0], truncate_prompt_tokens=5, use_tqdm=False)
    assert body["usage"]["prompt_tokens"] == 5
    assert cosine(body["data"][0]["embedding"], ref.outputs.embedding) >= 0.9999


def test_thirty_two_concurrent_clients_get_the_vectors_they_get_alone(minilm_server):
    def embed(http: httpx.Client, text: str) -> list[float]:
        return http.post("/v1/embeddings", json={"input": text}).json()["data"][0]["embedding"]

    with httpx.Client(base_url=minilm_server.url, timeout=60) as http:
        alone = [embed(http, text) for text in CLIENT_TEXTS]

    async def all_at_once():
        async with httpx.AsyncClient(base_url=minilm_server.url, timeout=60) as http:
            responses = await asyncio.gather(*(
                http.post("/v1/embeddings", json={"input": text}) for text in CLIENT_TEXTS))
        return [r.json()["data"][0]["embedding"] for r in responses]

    together = asyncio.run(all_at_once())
    for k, vector in enumerate(together):
        similarities = [cosine(vector, ref) for ref in alone]
        assert similarities[k] >= 0.9999
        assert max(range(len(alone)), key=similarities.__getitem__) == k


# ---- /pooling, /score on an embedding model ---------------------------


def test_pooling_returns_one_row_per_token(minilm_server):
    body = post(minilm_server, "/pooling", {"input": TEXTS[:2]}).json()
    assert body["id"].startswith("pool-") and body["object"] == "list"
    total = 0
    for item in body["data"]:
        assert item["object"] == "pooling"
        rows = item["data"]
        assert all(len(row) == 384 for row in rows)
        total += len(rows)
    assert total == body["usage"]["prompt_tokens"]


def test_score_on_an_embedding_model_is_cosine_similarity(minilm_server, minilm_bf16):
    body = post(minilm_server, "/score", {"text_1": TEXTS[2], "text_2": TEXTS}).json()
    offline = minilm_bf16.score(TEXTS[2], TEXTS, use_tqdm=False)
    assert body["id"].startswith("score-")
    assert [d["index"] for d in body["data"]] == list(range(len(TEXTS)))
    assert [d["score"] for d in body["data"]] == pytest.approx(
        [o.outputs.score for o in offline], abs=1e-3)
    assert body["data"][2]["score"] == pytest.approx(1.0, abs=1e-3)


# ---- errors ------------------------------------------------------------


def test_unknown_model_is_404(minilm_server):
    assert_error(post(minilm_server, "/v1/embeddings", {"model": "nope", "input": "x"}),
                 404, "The model `nope` does not exist.")
    with pytest.raises(openai.NotFoundError):
        client(minilm_server).embeddings.create(model="nope", input="x")


@pytest.mark.parametrize("body", [
    {"input": 5},
    {"text": "missing input"},
    {"input": ["a", 3]},
    {"input": "x", "encoding_format": "binary"},
    {"input": "x", "dimensions": "10"},
    ["not", "an", "object"],
])
def test_malformed_bodies_are_400_not_422(minilm_server, body):
    assert_error(post(minilm_server, "/v1/embeddings", body), 400)


def test_invalid_json_is_400(minilm_server):
    response = httpx.post(f"{minilm_server.url}/v1/embeddings", content=b"{not json",
                          headers={"content-type": "application/json"})
    assert_error(response, 400, "not valid JSON")


def test_input_longer_than_max_model_len_is_400_naming_both_lengths(minilm_server, minilm_bf16):
    text = "word " * 300
    num_tokens = len(minilm_bf16.get_tokenizer()(text)["input_ids"])
    assert_error(post(minilm_server, "/v1/embeddings", {"input": text}), 400,
                 f"This model's maximum context length is 256 tokens. However, you requested "
                 f"{num_tokens} tokens in the input for embedding generation. Please reduce "
                 "the length of the input.")


def test_add_special_tokens_false_embeds_the_text_without_them(minilm_server, minilm_bf16):
    tokenizer = minilm_bf16.get_tokenizer()
    text = "plain words only"
    bare = tokenizer(text, add_special_tokens=False)["input_ids"]
    body = post(minilm_server, "/v1/embeddings",
                {"input": text, "add_special_tokens": False}).json()
    assert body["usage"]["prompt_tokens"] == len(bare)
    (ref,) = minilm_bf16.embed({"prompt_token_ids": bare}, use_tqdm=False)
    assert body["data"][0]["embedding"] == pytest.approx(ref.outputs.embedding, abs=1e-6)
    with_special = post(minilm_server, "/v1/embeddings", {"input": text}).json()
    assert with_special["usage"]["prompt_tokens"] == len(bare) + 2  # [CLS] ... [SEP]
    rows = post(minilm_server, "/pooling", {"input": text, "add_special_tokens": False}).json()
    assert len(rows["data"][0]["data"]) == len(bare)
    assert_error(post(minilm_server, "/v1/embeddings",
                      {"input": ["fine", "  "], "add_special_tokens": False}), 400,
                 "Prompt 1 has no tokens")


def test_an_empty_model_name_means_the_served_model(minilm_server):
    served = httpx.get(f"{minilm_server.url}/v1/models").json()["data"][0]["id"]
    body = post(minilm_server, "/v1/embeddings", {"model": "", "input": "x"}).json()
    assert body["model"] == served


def test_empty_string_is_400(minilm_server):
    assert_error(post(minilm_server, "/v1/embeddings", {"input": ["fine", ""]}), 400,
                 "empty string")


def test_empty_rerank_document_is_named_by_its_index(minilm_server):
    assert_error(post(minilm_server, "/rerank", {"query": "q", "documents": ["a", ""]}), 400,
                 "documents[1] is an empty string")


def test_texts_that_are_not_unicode_are_named_by_their_place(minilm_server):
    def raw(path, body: str):  # JSON's "\ud800" is a lone surrogate
        return httpx.post(f"{minilm_server.url}{path}", content=body.encode(),
                          headers={"content-type": "application/json"})

    assert_error(raw("/score", '{"text_1": "q", "text_2": ["ok", "\\ud800"]}'), 400,
                 "text_2[1] is not valid Unicode")
    assert_error(raw("/rerank", '{"query": "\\ud800", "documents": ["ok"]}'), 400,
                 "query is not valid Unicode")
    assert_error(raw("/v1/embeddings", '{"model": "\\ud800", "input": "x"}'), 404,
                 "does not exist")


def test_empty_input_list_is_400(minilm_server):
    assert_error(post(minilm_server, "/v1/embeddings", {"input": []}), 400, "empty")


def test_token_ids_outside_the_vocabulary_are_400(minilm_server):
    assert_error(post(minilm_server, "/v1/embeddings", {"input": [101, 30522, 102]}), 400,
                 "out of vocabulary")
    assert_error(post(minilm_server, "/v1/embeddings", {"input": [[101, -1, 102]]}), 400,
                 "out of vocabulary")


def test_dimensions_on_a_model_without_matryoshka_is_400(minilm_server):
    assert_error(post(minilm_server, "/v1/embeddings", {"input": "x", "dimensions": 32}), 400,
                 f'Model "{DEFAULT_NAME}" does not support matryoshka representation, '
                 "changing output dimensions will lead to poor results.")


def test_a_route_the_task_does_not_support_is_400(minilm_server):
    assert_error(post(minilm_server, "/classify", {"input": "x"}), 400,
                 "Classification API is not supported by this model")


def test_unknown_paths_and_methods_answer_json(minilm_server):
    assert_error(httpx.get(f"{minilm_server.url}/v1/nothing"), 404)
    assert_error(httpx.get(f"{minilm_server.url}/v1/embeddings"), 405)


def test_a_body_that_is_not_declared_json_gets_a_hint(minilm_server):
    response = httpx.post(f"{minilm_server.url}/v1/embeddings", content=b'{"input": "x"}',
                          headers={"content-type": "text/plain"})
    assert_error(response, 400, "Content-Type: application/json")


def test_a_body_without_content_type_is_read_as_json(minilm_server):
    # What `requests.post(url, data=json.dumps(body))` sends; vLLM's server takes it.
    response = httpx.post(f"{minilm_server.url}/v1/embeddings", content=b'{"input": "x"}')
    assert "content-type" not in response.request.headers
    assert response.status_code == 200, response.text
    assert len(response.json()["data"][0]["embedding"]) == 384


# ---- the rest of the API -----------------------------------------------


def test_models_health_version(minilm_server):
    models = httpx.get(f"{minilm_server.url}/v1/models").json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == [DEFAULT_NAME]
    assert models["data"][0]["max_model_len"] == 256
    (permission,) = models["data"][0]["permission"]  # vLLM lists one; clients index it
    assert permission["object"] == "model_permission" and permission["allow_view"] is True
    # openai's models.retrieve: the id holds a slash, which the client sends as %2F
    card = client(minilm_server).models.retrieve(DEFAULT_NAME)
    assert card.id == DEFAULT_NAME and card.object == "model"
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client(minilm_server).models.retrieve("no/such-model")
    assert_error(httpx.get(f"{minilm_server.url}/v1/models/"), 404)
    assert httpx.get(f"{minilm_server.url}/health").status_code == 200
    from cenote import __version__
    assert httpx.get(f"{minilm_server.url}/version").json() == {"version": __version__}


def test_tokenize_and_detokenize_round_trip(minilm_server, minilm_bf16):
    body = post(minilm_server, "/tokenize",
                {"prompt": "Hello world", "return_token_strs": True}).json()
    assert body["tokens"] == minilm_bf16.get_tokenizer()("Hello world")["input_ids"]
    assert body["count"] == len(body["tokens"]) and body["max_model_len"] == 256
    assert body["token_strs"] == ["[CLS]", "hello", "world", "[SEP]"]
    text = post(minilm_server, "/detokenize", {"tokens": body["tokens"]}).json()["prompt"]
    assert text == "[CLS] hello world [SEP]"
    assert_error(post(minilm_server, "/detokenize", {"tokens": [10**6]}), 400,
                 "out of vocabulary")


def test_metrics_parse_as_prometheus_text(minilm_server):
    post(minilm_server, "/v1/embeddings", {"input": TEXTS})
    text = httpx.get(f"{minilm_server.url}/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    requests = families["cenote_requests"]
    assert any(s.labels == {"route": "/v1/embeddings", "status": "200"} and s.value >= 1
               for s in requests.samples)
    assert families["cenote_request_duration_seconds"].type == "histogram"
    assert families["cenote_queue_waiting_sequences"].type == "gauge"
    assert families["cenote_batch_tokens"].type == "histogram"
    processed = [s.value for s in families["cenote_tokens_processed"].samples
                 if s.name == "cenote_tokens_processed_total"]
    assert sum(processed) > 0
    # The process's own metrics, as a default Prometheus registry has them.
    assert families["process_resident_memory_bytes"].samples[0].value > 0


def test_server_logs_its_url_when_ready(minilm_server):
    port = minilm_server.url.rsplit(":", 1)[1]
    assert f"http://127.0.0.1:{port}" in minilm_server.log


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU default")
def test_the_server_runs_512_token_batches_on_cpu_by_default(minilm_server):
    assert "batches of up to 512 tokens" in minilm_server.log


def test_a_vllm_command_line_serves(cross_encoder_server):
    assert ("Ignoring vLLM options that do not apply here: --disable-log-requests, "
            "--enforce-eager, --gpu-memory-utilization, --seed, --tensor-parallel-size"
            in cross_encoder_server.log)
    assert post(cross_encoder_server, "/score", {"text_1": "a", "text_2": "b"}).status_code == 200


@pytest.mark.parametrize("argv,message", [
    (["--runner", "generate"], "pooling models only"),
    (["--tensor-parallel-size", "2"], "one device"),
    (["-tp", "4"], "one device"),
    (["--quantization", "awq"], "one quantization is int8"),
    (["--task", "embed", "--convert", "classify"], "disagree"),
    (["a", "--model", "b"], "MODEL given twice"),
])
def test_vllm_options_that_ask_the_impossible_are_refused(argv, message):
    from cenote.cli import build_parser, resolve_vllm_options

    args = build_parser().parse_args(["serve", *argv])
    assert message in resolve_vllm_options(args)


def test_chat_messages_need_a_template_the_server_trusts(minilm_server):
    messages = [{"role": "user", "content": "hello"}]
    assert_error(post(minilm_server, "/v1/embeddings", {"messages": messages}), 400,
                 "has no chat template")
    assert_error(post(minilm_server, "/v1/embeddings",
                      {"messages": messages, "chat_template": CHAT_TEMPLATE}), 400,
                 "--trust-request-chat-template")
    assert_error(post(minilm_server, "/v1/embeddings", {"messages": messages, "input": "x"}),
                 400, "either input or messages")


def test_vllm_spellings_of_cenote_options(tmp_path):
    from cenote.cli import _read_template, build_parser, resolve_vllm_options

    args = build_parser().parse_args(["serve", "-tp", "1", "--pooler-config",
                                      '{"pooling_type": "CLS"}', "--quantization", "none"])
    assert resolve_vllm_options(args) is None
    assert args.override_pooler_config == {"pooling_type": "CLS"}
    template = tmp_path / "chat.jinja"
    template.write_text("{{ messages[0].content }}")
    assert _read_template(str(template)) == "{{ messages[0].content }}"
    assert _read_template("{{ x }}") == "{{ x }}"  # given inline


def test_health_answers_head_and_ping(minilm_server):
    assert httpx.head(f"{minilm_server.url}/health").status_code == 200
    assert httpx.get(f"{minilm_server.url}/ping").status_code == 200
    assert httpx.post(f"{minilm_server.url}/ping").status_code == 200


def test_serve_help_explains_every_option():
    result = subprocess.run([sys.executable, "-m", "cenote", "serve", "--help"],
                            capture_output=True, text=True, check=True)
    for flag in ["--task", "--host", "--port", "--served-model-name", "--dtype",
                 "--max-model-len", "--override-pooler-config", "--hf-overrides", "--api-key",
                 "--max-num-batched-tokens"]:
        assert flag in result.stdout


@pytest.mark.parametrize("args, message", [
    (["--pooler-config.task", "token_classify"], "Unsupported task: 'token_classify'"),
    (["--max-model-len", "100000"], "greater than the model's maximum length"),
])
def test_a_model_that_cannot_be_served_as_asked_exits_with_one_line(args, message):
    result = subprocess.run([sys.executable, "-m", "cenote", "serve", "--port", "0", *args],
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 1
    assert "Cannot load the model" in result.stderr and message in result.stderr
    assert "Traceback" not in result.stderr


def test_options_may_be_spelt_with_underscores_as_in_vllm():
    from cenote.cli import dashed_options

    assert dashed_options(["serve", "my_model", "--hf_overrides", '{"a_b": 1}',
                           "--max_model_len=128", "--", "--not_an_option"]) == [
        "serve", "my_model", "--hf-overrides", '{"a_b": 1}', "--max-model-len=128", "--",
        "--not_an_option"]


# ---- cross-encoder: /score and /rerank --------------------------------

QUERY = "How do plants make food?"
DOCUMENTS = [
    "Stock markets fell sharply on Monday.",
    "Photosynthesis lets plants turn sunlight, water and carbon dioxide into sugar.",
    "The recipe needs two eggs and a cup of flour.",
    "Plants make their food in the leaves using light.",
]


def test_cross_encoder_scores_equal_offline(cross_encoder_server, cross_encoder_fp32):
    body = post(cross_encoder_server, "/v1/score", {"text_1": QUERY, "text_2": DOCUMENTS}).json()
    offline = cross_encoder_fp32.score(QUERY, DOCUMENTS, use_tqdm=False)
    assert [d["object"] for d in body["data"]] == ["score"] * len(DOCUMENTS)
    assert [d["score"] for d in body["data"]] == pytest.approx(
        [o.outputs.score for o in offline], abs=1e-4)
    assert body["usage"]["prompt_tokens"] == sum(len(o.prompt_token_ids) for o in offline)


def test_score_pairs_must_be_one_to_one_one_to_n_or_n_to_n(cross_encoder_server):
    assert_error(post(cross_encoder_server, "/score",
                      {"text_1": ["a", "b"], "text_2": ["c", "d", "e"]}), 400,
                 "Input lengths must be either 1:1, 1:N or N:N")


@pytest.mark.parametrize("path", ["/rerank", "/v1/rerank", "/v2/rerank"])
def test_rerank_sorts_documents_by_relevance(cross_encoder_server, cross_encoder_fp32, path):
    body = post(cross_encoder_server, path, {"query": QUERY, "documents": DOCUMENTS}).json()
    offline = [o.outputs.score for o in
               cross_encoder_fp32.score(QUERY, DOCUMENTS, use_tqdm=False)]
    assert body["id"].startswith("rerank-")
    results = body["results"]
    assert sorted(r["index"] for r in results) == list(range(len(DOCUMENTS)))
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    for r in results:
        assert r["document"] == {"text": DOCUMENTS[r["index"]]}
        assert r["relevance_score"] == pytest.approx(offline[r["index"]], abs=1e-4)
    assert body["usage"]["total_tokens"] > 0


def test_rerank_top_n_keeps_the_best(cross_encoder_server):
    full = post(cross_encoder_server, "/rerank", {"query": QUERY, "documents": DOCUMENTS})
    top = post(cross_encoder_server, "/rerank",
               {"query": QUERY, "documents": DOCUMENTS, "top_n": 2})
    assert top.json()["results"] == full.json()["results"][:2]
    # 0 or less: every document, as vLLM
    every = post(cross_encoder_server, "/rerank",
                 {"query": QUERY, "documents": DOCUMENTS, "top_n": -1})
    assert every.json()["results"] == full.json()["results"]
    assert_error(post(cross_encoder_server, "/rerank", {"query": QUERY, "documents": []}), 400)


def test_rerank_takes_cohere_document_objects_and_a_null_top_n(cross_encoder_server):
    # Cohere's v1 client sends {"text": ...} documents; Jina-style clients "top_n": null.
    full = post(cross_encoder_server, "/rerank", {"query": QUERY, "documents": DOCUMENTS})
    body = post(cross_encoder_server, "/v1/rerank", {
        "query": QUERY, "documents": [{"text": d} for d in DOCUMENTS], "top_n": None})
    assert body.json()["results"] == full.json()["results"]
    assert_error(post(cross_encoder_server, "/rerank",
                      {"query": QUERY, "documents": [{"title": "no text"}]}), 400)


@pytest.mark.parametrize("names", [("queries", "documents"), ("queries", "items"),
                                   ("data_1", "data_2")])
def test_score_takes_vllms_newer_names_for_its_two_sides(cross_encoder_server, names):
    expected = post(cross_encoder_server, "/score", {"text_1": QUERY, "text_2": DOCUMENTS})
    body = post(cross_encoder_server, "/score", {names[0]: QUERY, names[1]: DOCUMENTS})
    assert [d["score"] for d in body.json()["data"]] == [
        d["score"] for d in expected.json()["data"]]


@pytest.mark.parametrize("field", ["activation", "use_activation"])
def test_score_and_rerank_without_activation_give_the_logit(cross_encoder_server, field):
    import math

    scores = [d["score"] for d in post(cross_encoder_server, "/score",
                                       {"text_1": QUERY, "text_2": DOCUMENTS}).json()["data"]]
    logits = [d["score"] for d in post(cross_encoder_server, "/score",
                                       {"text_1": QUERY, "text_2": DOCUMENTS,
                                        field: False}).json()["data"]]
    # The cross-encoder has one label: its score is the sigmoid of its logit.
    assert [1 / (1 + math.exp(-x)) for x in logits] == pytest.approx(scores, abs=1e-5)
    ranked = post(cross_encoder_server, "/rerank",
                  {"query": QUERY, "documents": DOCUMENTS, field: False}).json()["results"]
    assert {r["index"]: r["relevance_score"] for r in ranked} == pytest.approx(
        dict(enumerate(logits)), abs=1e-5)


def test_a_too_long_pair_is_named_as_score_input(cross_encoder_server):
    assert_error(post(cross_encoder_server, "/score", {"text_1": "q", "text_2": "word " * 600}),
                 400, "tokens in the input for score. Please reduce the length of the input.")
    # vLLM words a rerank's the embeddings' way.
    assert_error(post(cross_encoder_server, "/rerank",
                      {"query": "q", "documents": ["word " * 600]}),
                 400, "tokens in the input for embedding generation.")


def test_embeddings_on_a_cross_encoder_is_400(cross_encoder_server):
    assert_error(post(cross_encoder_server, "/v1/embeddings", {"input": "x"}), 400,
                 "Embedding API is not supported by this model")


# ---- classifier behind an API key --------------------------------------

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def test_classify_returns_labels_and_probabilities(classifier_server, classifier_fp32):
    body = post(classifier_server, "/classify", {"input": TEXTS}, AUTH).json()
    offline = classifier_fp32.classify(TEXTS, use_tqdm=False)
    assert body["id"].startswith("classify-") and body["model"] == CLASSIFIER_NAMES[0]
    labels = classifier_fp32.config.id2label
    for item, ref in zip(body["data"], offline, strict=True):
        probs = ref.outputs.probs
        assert item["probs"] == pytest.approx(probs, abs=1e-4)
        assert item["num_classes"] == 3
        assert item["label"] == labels[max(range(3), key=probs.__getitem__)]
    assert {item["label"] for item in body["data"]} <= {"LABEL_A", "LABEL_B", "LABEL_C"}


def test_classify_activation_false_gives_the_logits(classifier_server, classifier_fp32):
    from cenote import PoolingParams

    offline = classifier_fp32.classify(TEXTS[:2], pooling_params=PoolingParams(activation=False),
                                       use_tqdm=False)
    for field in ("activation", "softmax", "use_activation"):
        body = post(classifier_server, "/classify", {"input": TEXTS[:2], field: False},
                    AUTH).json()
        for item, ref in zip(body["data"], offline, strict=True):
            assert item["probs"] == pytest.approx(ref.outputs.probs, abs=1e-4)
            assert abs(sum(item["probs"]) - 1) > 1e-3  # logits, not probabilities
    assert_error(post(classifier_server, "/classify",
                      {"input": "x", "activation": True, "softmax": False}, AUTH), 400, "alias")


CHAT_TEMPLATE = ("{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")


def test_chat_messages_go_through_the_chat_template(classifier_server):
    messages = [{"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "I love"},
                                             {"type": "text", "text": "this film"}]}]
    rendered = "system: be brief\nuser: I love\nthis film\nassistant:"
    chat = {"messages": messages, "chat_template": CHAT_TEMPLATE, "add_generation_prompt": True}
    body = post(classifier_server, "/classify", chat, AUTH).json()
    # As vLLM: the template's text, without the tokenizer's special tokens by default.
    plain = post(classifier_server, "/classify",
                 {"input": rendered, "add_special_tokens": False}, AUTH).json()
    assert body["data"][0]["probs"] == pytest.approx(plain["data"][0]["probs"], abs=1e-6)
    assert body["usage"] == plain["usage"]
    tokens = post(classifier_server, "/tokenize", chat, AUTH).json()
    expected = post(classifier_server, "/tokenize",
                    {"prompt": rendered, "add_special_tokens": False}, AUTH).json()
    assert tokens["tokens"] == expected["tokens"]
    # /tokenize adds the generation prompt unless told not to (vLLM's default there).
    chat.pop("add_generation_prompt")
    assert post(classifier_server, "/tokenize", chat, AUTH).json() == tokens
    assert_error(post(classifier_server, "/classify",
                      {"messages": messages, "chat_template": "{{ messages[9].x }}"}, AUTH),
                 400, "chat template failed")


def test_messages_name_the_first_served_name(classifier_server):
    response = post(classifier_server, "/pooling",
                    {"model": CLASSIFIER_NAMES[1], "input": "x", "dimensions": 4}, AUTH)
    assert_error(response, 400, f'Model "{CLASSIFIER_NAMES[0]}" does not support matryoshka')


def test_requests_without_the_api_key_are_401(classifier_server):
    assert_error(post(classifier_server, "/classify", {"input": "x"}), 401)
    assert_error(post(classifier_server, "/classify", {"input": "x"},
                      {"Authorization": "Bearer wrong"}), 401)
    assert_error(httpx.get(f"{classifier_server.url}/v1/models"), 401)
    assert_error(httpx.get(f"{classifier_server.url}/metrics"), 401)
    with pytest.raises(openai.AuthenticationError):
        client(classifier_server, "wrong").models.list()


def test_health_needs_no_api_key(classifier_server):
    assert httpx.get(f"{classifier_server.url}/health").status_code == 200
    assert httpx.get(f"{classifier_server.url}/ping").status_code == 200


def test_every_served_name_is_accepted(classifier_server):
    models = client(classifier_server, API_KEY).models.list()
    assert [m.id for m in models.data] == CLASSIFIER_NAMES
    body = post(classifier_server, "/classify", {"model": "other-name", "input": "x"}, AUTH)
    assert body.json()["model"] == "other-name"


def test_score_and_rerank_are_not_routes_of_a_classifier_with_several_labels(
        classifier_server):
    # vLLM registers them only for one label: a client sees 404, as for any unknown route.
    refused = post(classifier_server, "/score", {"text_1": "a", "text_2": "b"}, AUTH)
    assert_error(refused, 404, "Not Found")
    assert refused.json()["detail"] == "Not Found"
    assert_error(post(classifier_server, "/rerank", {"query": "a", "documents": ["b"]}, AUTH),
                 404, "classifier with 3 labels")


def test_invocations_answers_as_the_route_the_body_is_for(minilm_server):
    embedded = post(minilm_server, "/invocations", {"input": ["a flood"]}).json()
    assert embedded["object"] == "list" and embedded["data"][0]["object"] == "embedding"
    direct = post(minilm_server, "/v1/embeddings", {"input": ["a flood"]}).json()
    assert embedded["data"][0]["embedding"] == direct["data"][0]["embedding"]
    reranked = post(minilm_server, "/invocations",
                    {"query": "flood", "documents": ["rain", "a flood"]}).json()
    assert [r["index"] for r in reranked["results"]] == [1, 0]
    scored = post(minilm_server, "/invocations", {"text_1": "flood", "text_2": ["a flood"]})
    assert scored.json()["data"][0]["object"] == "score"


def test_invocations_of_a_classifier_classify_and_refuse_other_bodies(classifier_server):
    classified = post(classifier_server, "/invocations", {"input": "x"}, AUTH).json()
    assert classified["data"][0]["label"] in ("LABEL_A", "LABEL_B", "LABEL_C")
    assert_error(post(classifier_server, "/invocations", {"text_1": "a", "text_2": "b"}, AUTH),
                 400, "Cannot find suitable handler for request")
