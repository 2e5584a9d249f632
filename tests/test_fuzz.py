"""Hostile input never breaks the server: fuzzing every route of a real ``cenote serve``.

Hypothesis sends each route malformed and adversarial bodies: wrong types,
huge and negative numbers, NaN and Infinity, lone surrogates, nested junk,
unknown fields, empty and 100k-item lists, token ids outside the vocabulary,
bytes that are not UTF-8 or not JSON. Every answer must be below 500 and, when
it is an error, the SPEC's JSON error object; afterwards the server must still
be alive, healthy and giving correct answers.

Two servers: the bundled MiniLM (an embedding model) and a cross-encoder, so
both ways of scoring pairs are fuzzed.
"""

from __future__ import annotations

import json
import sys

import httpx
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.serving import cenote_serve

# Bounded so the file runs in about a minute on two cores.
FUZZ = settings(max_examples=120, deadline=None, derandomize=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

EMBEDDING_ROUTES = ["/v1/embeddings", "/pooling"]
PAIR_ROUTES = ["/score", "/v1/score"]
RERANK_ROUTES = ["/rerank", "/v1/rerank", "/v2/rerank"]
GET_ROUTES = ["/health", "/version", "/v1/models", "/metrics"]
VOCAB_SIZE = 30522  # MiniLM's; the cross-encoder shares its tokenizer
HUGE_LIST = 100_000

# ---- strategies --------------------------------------------------------

# Any code point, lone surrogates included: json.dumps escapes them as \ud800.
any_text = st.text(st.characters(exclude_categories=()), max_size=40)
numbers = st.one_of(
    st.integers(min_value=-(10 ** 30), max_value=10 ** 30),
    st.sampled_from([0, -1, 1, 2 ** 31, 2 ** 63, -(2 ** 63), 10 ** 100]),
    st.floats(allow_nan=True, allow_infinity=True),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, any_text)
junk = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5),
                            st.dictionaries(any_text, inner, max_size=5)),
    max_leaves=20,
)
token_ids = st.one_of(
    st.integers(min_value=0, max_value=VOCAB_SIZE - 1),
    st.integers(min_value=VOCAB_SIZE, max_value=10 ** 20),
    st.integers(max_value=-1),
)
huge_lists = st.sampled_from([
    [], [""], [[]], ["a"] * HUGE_LIST, [1] * HUGE_LIST, [[101, 102]] * HUGE_LIST,
])
texts = st.one_of(any_text, st.just(""), st.just("word " * 400))
prompt_input = st.one_of(
    texts,
    st.lists(texts, max_size=6),
    st.lists(token_ids, max_size=12),
    st.lists(st.lists(token_ids, max_size=8), max_size=4),
    huge_lists,
    junk,
)
option = st.one_of(numbers, st.booleans(), any_text, st.none(), junk)
unknown_fields = st.dictionaries(any_text, junk, max_size=3)

# Well-formed values, so that a good share of the bodies get past validation and the
# fuzzing reaches tokenising, batching, the model and the response.
words = st.text(st.characters(categories=["L", "N", "Zs"]), min_size=1, max_size=30)
vocab_ids = st.integers(min_value=0, max_value=VOCAB_SIZE - 1)
good_input = st.one_of(words, st.lists(words, min_size=1, max_size=5),
                       st.lists(vocab_ids, min_size=1, max_size=12),
                       st.lists(st.lists(vocab_ids, min_size=1, max_size=8), min_size=1,
                                max_size=4))
good_truncation = st.sampled_from([None, -1, 1, 5, 256])


def either(good: st.SearchStrategy, hostile: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(good, hostile)


def body_of(required: dict[str, st.SearchStrategy],
            optional: dict[str, st.SearchStrategy]) -> st.SearchStrategy:
    """A JSON object with the route's fields (good or hostile values), with or without
    unknown fields, with fields missing, or any JSON value at all."""
    shaped = st.fixed_dictionaries(required, optional=optional)
    with_unknown = st.builds(lambda known, extra: {**extra, **known}, shaped, unknown_fields)
    partial = st.fixed_dictionaries({}, optional={**required, **optional})
    return st.one_of(shaped, with_unknown, partial, junk)


models = either(st.none(), st.one_of(any_text, junk))
embedding_body = body_of({"input": either(good_input, prompt_input)}, {
    "model": models,
    "encoding_format": either(st.sampled_from(["float", "base64"]),
                              st.one_of(st.sampled_from(["binary", ""]), option)),
    "dimensions": either(st.none(), option),
    "truncate_prompt_tokens": either(good_truncation, option),
    "normalize": either(st.sampled_from([None, True, False]), option),
    "user": either(words, option),
})
score_body = body_of({
    "text_1": either(words, st.one_of(texts, st.lists(texts, max_size=5), huge_lists, junk)),
    "text_2": either(st.one_of(words, st.lists(words, min_size=1, max_size=4)),
                     st.one_of(texts, st.lists(texts, max_size=5), huge_lists, junk)),
}, {"model": models, "truncate_prompt_tokens": either(good_truncation, option)})
rerank_body = body_of({
    "query": either(words, st.one_of(texts, junk)),
    "documents": either(st.lists(words, min_size=1, max_size=6),
                        st.one_of(st.lists(texts, max_size=6), huge_lists, junk)),
}, {"model": models, "top_n": either(st.integers(0, 10), option),
    "truncate_prompt_tokens": either(good_truncation, option)})
tokenize_body = body_of({"prompt": either(words, st.one_of(texts, junk))}, {
    "model": models, "add_special_tokens": either(st.booleans(), option),
    "return_token_strs": either(st.booleans(), option),
})
detokenize_body = body_of({
    "tokens": either(st.lists(vocab_ids, max_size=12),
                     st.one_of(st.lists(token_ids, max_size=12), huge_lists, junk)),
}, {"model": models})
# Raw bodies: not UTF-8, not JSON, JSON with invalid bytes inside a string, truncated JSON.
raw_bodies = st.one_of(
    st.binary(max_size=200),
    st.builds(lambda b: b'{"input": "' + b + b'"}', st.binary(min_size=1, max_size=20)),
    st.sampled_from([b"", b"{", b'{"input": ["a", ', b"\xff\xfe\x00", b"null", b"[]",
                     b'{"input": NaN}', b'{"input": "a"}' * 3, b'{"input": "\\ud800"}']),
)

# ---- servers -----------------------------------------------------------


@pytest.fixture(scope="module")
def minilm_server():
    with cenote_serve([]) as server:
        yield server


@pytest.fixture(scope="module")
def cross_encoder_server(cross_encoder_path):
    with cenote_serve([str(cross_encoder_path), "--dtype", "float32"]) as server:
        yield server


@pytest.fixture(scope="module")
def http(minilm_server):
    with httpx.Client(timeout=60) as client:
        yield client


def send(http: httpx.Client, url: str, body, method: str = "POST") -> httpx.Response:
    if isinstance(body, bytes):
        content = body
    else:
        content = json.dumps(body).encode()  # NaN and Infinity as JSON5-style literals
    return http.request(method, url, content=content,
                        headers={"content-type": "application/json"})


def assert_answered_without_server_error(response: httpx.Response, seen: set[int]) -> None:
    seen.add(response.status_code)
    assert response.status_code < 500, response.text
    assert "Traceback" not in response.text
    if response.status_code >= 400:
        assert response.headers["content-type"].startswith("application/json")
        error = response.json()["error"]
        assert error["code"] == response.status_code
        assert isinstance(error["message"], str) and error["message"]
        # Error hygiene: no object repr, address or path of this machine's Python.
        for leak in ("object at 0x", "site-packages", sys.prefix):
            assert leak not in error["message"], error["message"]


def assert_alive_and_healthy(server) -> None:
    assert server.process.poll() is None
    assert httpx.get(f"{server.url}/health", timeout=30).status_code == 200


# ---- the fuzz tests ----------------------------------------------------


def fuzz_route(server, http: httpx.Client, route: str, bodies: st.SearchStrategy) -> set[int]:
    """Send ``bodies`` to ``route``; the statuses seen. Fails on any 5xx or bad error body."""
    seen: set[int] = set()

    @FUZZ
    @given(body=st.one_of(bodies, raw_bodies))
    def fuzz(body):
        assert_answered_without_server_error(send(http, server.url + route, body), seen)

    fuzz()
    assert_alive_and_healthy(server)
    return seen


@pytest.mark.parametrize("route", EMBEDDING_ROUTES)
def test_embedding_routes_survive_adversarial_bodies(minilm_server, http, route):
    seen = fuzz_route(minilm_server, http, route, embedding_body)
    assert 200 in seen and 400 in seen  # the fuzzer reached the model, not only validation


def test_classify_survives_adversarial_bodies(cross_encoder_server, http):
    seen = fuzz_route(cross_encoder_server, http, "/classify", embedding_body)
    assert 200 in seen and 400 in seen


@pytest.mark.parametrize("route", PAIR_ROUTES + RERANK_ROUTES)
@pytest.mark.parametrize("which", ["embedding model", "cross-encoder"])
def test_scoring_routes_survive_adversarial_bodies(minilm_server, cross_encoder_server, http,
                                                   route, which):
    server = minilm_server if which == "embedding model" else cross_encoder_server
    seen = fuzz_route(server, http, route, score_body if route in PAIR_ROUTES else rerank_body)
    assert 200 in seen and 400 in seen


@pytest.mark.parametrize("route, bodies", [("/tokenize", tokenize_body),
                                           ("/detokenize", detokenize_body)])
def test_tokenizer_routes_survive_adversarial_bodies(minilm_server, http, route, bodies):
    seen = fuzz_route(minilm_server, http, route, bodies)
    assert 200 in seen and 400 in seen


def test_get_routes_and_wrong_methods_survive_junk(minilm_server, http):
    seen: set[int] = set()

    @settings(FUZZ, max_examples=60)
    @given(route=st.sampled_from(GET_ROUTES + EMBEDDING_ROUTES + RERANK_ROUTES),
           method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
           body=st.one_of(junk, raw_bodies))
    def fuzz(route, method, body):
        assert_answered_without_server_error(
            send(http, minilm_server.url + route, body, method), seen)

    fuzz()
    assert_alive_and_healthy(minilm_server)
    assert 405 in seen


def test_after_the_fuzzing_the_server_still_gives_correct_answers(minilm_server, minilm_bf16):
    # Runs last in this file: the servers above have taken every fuzz test's bodies.
    text = "The server still answers correctly."
    response = httpx.post(f"{minilm_server.url}/v1/embeddings", json={"input": text}, timeout=60)
    assert response.status_code == 200
    (expected,) = minilm_bf16.embed([text], use_tqdm=False)
    got = torch.tensor(response.json()["data"][0]["embedding"])
    assert F.cosine_similarity(got, torch.tensor(expected.outputs.embedding), dim=0) >= 0.9999
