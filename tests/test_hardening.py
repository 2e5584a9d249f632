"""Overload, faults and hostile clients: the server refuses clearly and keeps serving.

Most tests run the app in process around a real engine (MiniLM or a
cross-encoder), with the model's batch function wrapped so a test can hold the
worker mid-batch or make it fail on one token id; that makes queue states
deterministic without timing. The limits that depend on the HTTP server
itself (body cap, chunked bodies, disconnects, SIGTERM, logs) run against
real ``cenote serve`` processes.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import signal
import socket
import threading
import time
from urllib.parse import urlparse

import httpx
import pytest
import torch
import torch.nn.functional as F

from cenote import LLM
from cenote.config import ModelConfig
from cenote.engine.async_engine import AsyncPoolingEngine
from cenote.engine.engine import PoolingEngine
from cenote.server.app import begin_draining, build_app
from cenote.server.context import ServerLimits
from tests.serving import cenote_serve, metric
from tests.test_async_engine import TEXTS, record, wait_until

POISON = 4242  # a token id the wrapped model refuses, standing in for a poisonous input
CANARY = "Zebra-canary-7781 sings"  # input text that must not reach the logs


# ---- in-process apps ---------------------------------------------------


@pytest.fixture(scope="module")
def cross_encoder(cross_encoder_path):
    return LLM(str(cross_encoder_path), dtype="float32")


@pytest.fixture(scope="module")
def small_batches(minilm_path) -> PoolingEngine:
    """MiniLM with 64-token batches, so a request of a few texts spans several batches."""
    return PoolingEngine(ModelConfig.from_args(model=str(minilm_path), max_model_len=32,
                                               max_num_batched_tokens=64))


@pytest.fixture
def make_app(minilm_bf16):
    """``make_app(llm=None, core=None, max_queued_tokens=None, max_queue_seconds=None,
    **build_app_kwargs)`` -> (app, engine), the engine started (ASGI test transports do
    not run the app's lifespan). ``core``: a PoolingEngine to use instead of ``llm``'s."""
    engines = []

    def make(llm: LLM | None = None, core: PoolingEngine | None = None,
             max_queued_tokens: int | None = None, max_queue_seconds: float | None = None,
             **kwargs):
        engine = AsyncPoolingEngine(core or (llm or minilm_bf16).engine,
                                    max_queued_tokens=max_queued_tokens,
                                    max_queue_seconds=max_queue_seconds)
        app = build_app(engine, **kwargs)
        engine.start()
        engines.append(engine)
        return app, engine

    yield make
    for engine in engines:
        engine.shutdown()


def client(app) -> httpx.AsyncClient:
    # raise_app_exceptions=False: see the 500 answer, as a real client would.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://cenote.test", timeout=60)


def assert_error(response: httpx.Response, status: int, message_part: str = "") -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    body = body["error"]
    assert set(body) == {"message", "type", "param", "code"}
    assert body["code"] == status
    assert message_part in body["message"], body["message"]
    return body


def embedding_of(llm: LLM, text: str) -> torch.Tensor:
    (out,) = llm.embed([text], use_tqdm=False)
    return torch.tensor(out.outputs.embedding)


def cosine(a, b) -> float:
    return F.cosine_similarity(torch.as_tensor(a), torch.as_tensor(b), dim=0).item()


def contains_tokens(batch: list[tuple[int, ...]], token_ids: list[int]) -> bool:
    return tuple(token_ids) in batch


# ---- admission control and timeouts ------------------------------------


def test_a_full_queue_answers_429_with_retry_after_and_admits_again_once_drained(
        make_app, monkeypatch):
    app, engine = make_app(max_queued_tokens=20)
    recorder = record(monkeypatch, engine, hold_first=True)

    async def scenario():
        async with client(app) as http:
            blocker = asyncio.ensure_future(
                http.post("/v1/embeddings", json={"input": "Hold the worker."}))
            await asyncio.to_thread(recorder.entered.wait, 30)
            # Admitted: the queue is below the cap when it arrives, however big it is.
            filler = asyncio.ensure_future(http.post("/v1/embeddings", json={"input": TEXTS}))
            await wait_until(lambda: engine.num_waiting_tokens > 20)
            refused = await http.post("/v1/embeddings", json={"input": "One more."})
            recorder.release.set()
            answered = await asyncio.gather(blocker, filler)
            after = await http.post("/v1/embeddings", json={"input": "One more."})
            return refused, answered, after

    refused, answered, after = asyncio.run(scenario())
    assert_error(refused, 429, "tokens are queued")
    assert int(refused.headers["retry-after"]) >= 1
    assert [r.status_code for r in answered] == [200, 200]
    assert after.status_code == 200


def test_a_request_bigger_than_a_batch_gets_429_while_the_queue_ahead_takes_too_long(
        make_app, monkeypatch, small_batches):
    # Any queued work takes "too long"; a request of one batch or less is still admitted
    # (it runs ahead of the backlog), a bigger one is not.
    app, engine = make_app(core=small_batches, max_queue_seconds=1e-9)
    big = [f"Sentence number {i} of the big request." for i in range(8)]  # > 64 tokens

    async def scenario():
        async with client(app) as http:
            # Measures the throughput; admitted, as nothing waits ahead of it.
            alone = await http.post("/v1/embeddings", json={"input": big})
            recorder = record(monkeypatch, engine, hold_first=True)
            blocker = asyncio.ensure_future(engine.encode(["Hold the worker."], "embed"))
            await asyncio.to_thread(recorder.entered.wait, 30)
            queued = asyncio.ensure_future(engine.encode(["Waits in the queue."], "embed"))
            await wait_until(lambda: engine.num_waiting_seqs == 1)
            refused = await http.post("/v1/embeddings", json={"input": big})
            small = asyncio.ensure_future(http.post("/v1/embeddings", json={"input": "Small."}))
            await wait_until(lambda: engine.num_waiting_seqs == 2)
            recorder.release.set()
            await asyncio.gather(blocker, queued)
            return alone, refused, await small

    alone, refused, small = asyncio.run(scenario())
    assert alone.status_code == 200
    assert_error(refused, 429, "bigger than one batch")
    assert int(refused.headers["retry-after"]) >= 1
    assert small.status_code == 200


def test_a_request_past_its_timeout_gets_504_and_its_queued_work_is_dropped(
        make_app, monkeypatch, minilm_bf16):
    app, engine = make_app(limits=ServerLimits(request_timeout_s=5.0))
    recorder = record(monkeypatch, engine, hold_first=True)
    late_ids = minilm_bf16.get_tokenizer()(TEXTS)["input_ids"]

    async def scenario():
        blocker = asyncio.ensure_future(engine.encode(["Hold the worker."], "embed"))
        await asyncio.to_thread(recorder.entered.wait, 30)
        async with client(app) as http:
            late = asyncio.ensure_future(http.post("/v1/embeddings", json={"input": TEXTS}))
            await wait_until(lambda: engine.num_waiting_seqs == len(TEXTS))
            timed_out = await late  # the worker stays held until this answer is in
            left = engine.num_waiting_seqs
            recorder.release.set()
            await blocker
            after = await http.post("/v1/embeddings", json={"input": "After the timeout."})
            return timed_out, left, after

    timed_out, left, after = asyncio.run(scenario())
    assert_error(timed_out, 504, "did not finish within 5 s")
    assert left == 0
    assert after.status_code == 200
    assert not any(contains_tokens(batch, ids) for batch in recorder.batches for ids in late_ids)


# ---- fault isolation and health ----------------------------------------


def test_a_poisonous_input_fails_alone_and_its_batch_mates_succeed(
        make_app, monkeypatch, minilm_bf16):
    app, engine = make_app()
    recorder = record(monkeypatch, engine, hold_first=True, poison=POISON)
    healthy = TEXTS[:4]

    async def scenario():
        blocker = asyncio.ensure_future(engine.encode(["Hold the worker."], "embed"))
        await asyncio.to_thread(recorder.entered.wait, 30)
        async with client(app) as http:
            clients = [asyncio.ensure_future(http.post("/v1/embeddings", json={"input": text}))
                       for text in healthy]
            poisoned = asyncio.ensure_future(http.post(
                "/v1/embeddings", json={"input": [[101, 2204, 102], [101, POISON, 102]]}))
            await wait_until(lambda: engine.num_waiting_seqs == len(healthy) + 2)
            recorder.release.set()
            await blocker
            return await asyncio.gather(*clients), await poisoned

    answers, poisoned = asyncio.run(scenario())
    # They all shared one batch, which failed; then each ran alone.
    assert len(recorder.batches[1]) == len(healthy) + 2
    assert all(len(batch) == 1 for batch in recorder.batches[2:])
    body = assert_error(poisoned, 500, "The model failed on input 1 of this request.")
    assert "poisoned" not in body["message"]  # the model's own message stays in the log
    for text, answer in zip(healthy, answers, strict=True):
        assert answer.status_code == 200, answer.text
        assert cosine(answer.json()["data"][0]["embedding"],
                      embedding_of(minilm_bf16, text)) >= 0.9999
    assert engine.is_running


def test_health_fails_while_the_engine_is_stuck_and_recovers_when_it_moves(
        make_app, monkeypatch):
    app, engine = make_app(limits=ServerLimits(engine_stall_timeout_s=0.05))
    recorder = record(monkeypatch, engine, hold_first=True)

    async def scenario():
        async with client(app) as http:
            healthy_before = (await http.get("/health")).status_code
            stuck = asyncio.ensure_future(engine.encode(["A batch that hangs."], "embed"))
            await asyncio.to_thread(recorder.entered.wait, 30)
            await wait_until(lambda: engine.seconds_without_progress > 0.05)
            while_stuck = await http.get("/health")
            recorder.release.set()
            await stuck
            await wait_until(lambda: engine.seconds_without_progress == 0)  # idle again
            return healthy_before, while_stuck, await http.get("/health")

    healthy_before, while_stuck, after = asyncio.run(scenario())
    assert healthy_before == 200
    assert_error(while_stuck, 503, "stuck")
    assert after.status_code == 200


def test_health_fails_and_requests_get_503_once_the_worker_died(make_app, monkeypatch):
    app, engine = make_app()

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in the batch picker")

    monkeypatch.setattr(engine.client._queue, "next_batch", broken)

    async def scenario():
        async with client(app) as http:
            first = await http.post("/v1/embeddings", json={"input": "Kills the worker."})
            await wait_until(lambda: not engine.is_running)
            return first, await http.get("/health"), await http.post(
                "/v1/embeddings", json={"input": "After."})

    first, health, after = asyncio.run(scenario())
    assert_error(first, 503, "internal error")
    assert_error(health, 503, "not running")
    assert_error(after, 503, "not running")


# ---- lifecycle ---------------------------------------------------------


DISCONNECT_CASES = [
    ("minilm", "/v1/embeddings", {"input": TEXTS}),
    ("minilm", "/pooling", {"input": TEXTS}),
    ("minilm", "/score", {"text_1": TEXTS[0], "text_2": TEXTS[1:]}),
    ("minilm", "/v1/rerank", {"query": TEXTS[0], "documents": TEXTS[1:]}),
    ("cross-encoder", "/classify", {"input": TEXTS}),
    ("cross-encoder", "/v1/score", {"text_1": TEXTS[0], "text_2": TEXTS[1:]}),
    ("cross-encoder", "/rerank", {"query": TEXTS[0], "documents": TEXTS[1:]}),
    ("cross-encoder", "/v2/rerank", {"query": TEXTS[0], "documents": TEXTS[1:]}),
]


async def call_then_disconnect(app, path: str, body: dict, gone: asyncio.Event) -> list[dict]:
    """Drive the ASGI app like a server whose client hangs up once ``gone`` is set."""
    content = json.dumps(body).encode()
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 50000), "server": ("cenote.test", 80),
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(content)).encode())],
    }
    sent_body = False
    messages: list[dict] = []

    async def receive() -> dict:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": content, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        messages.append(message)

    await app(scope, receive, send)
    return messages


@pytest.mark.parametrize("model, path, body", DISCONNECT_CASES,
                         ids=[f"{m}{p}" for m, p, _ in DISCONNECT_CASES])
def test_a_client_that_disconnects_has_its_queued_work_dropped(
        make_app, monkeypatch, cross_encoder, model, path, body):
    app, engine = make_app(llm=cross_encoder if model == "cross-encoder" else None)
    recorder = record(monkeypatch, engine, hold_first=True)
    warmup_task = "classify" if model == "cross-encoder" else "embed"

    async def scenario():
        blocker = asyncio.ensure_future(engine.encode(["Hold the worker."], warmup_task))
        await asyncio.to_thread(recorder.entered.wait, 30)
        gone = asyncio.Event()
        call = asyncio.ensure_future(call_then_disconnect(app, path, body, gone))
        await wait_until(lambda: engine.num_waiting_seqs > 0)
        gone.set()
        messages = await asyncio.wait_for(call, 30)
        left = engine.num_waiting_seqs
        recorder.release.set()
        await blocker
        return messages, left

    messages, left = asyncio.run(scenario())
    assert messages == []  # nobody to answer
    assert left == 0
    assert len(recorder.batches) == 1  # only the blocker ever ran
    metrics = app.state.context.metrics.render().decode()
    assert f'cenote_requests_total{{route="{path}",status="499"}} 1.0' in metrics, [
        line for line in metrics.splitlines() if line.startswith("cenote_requests_total")]


def test_while_draining_new_requests_and_health_get_503(make_app):
    app, _ = make_app()

    async def scenario():
        async with client(app) as http:
            before = await http.get("/health")
            begin_draining(app)
            return before, await http.post("/v1/embeddings", json={"input": "Late."}), \
                await http.get("/health")

    before, refused, health = asyncio.run(scenario())
    assert before.status_code == 200
    assert_error(refused, 503, "shutting down")
    assert_error(health, 503, "shutting down")


def test_while_draining_ping_stays_200_for_liveness_probes(make_app):
    app, _ = make_app()

    async def scenario():
        async with client(app) as http:
            begin_draining(app)
            return await http.get("/ping"), await http.get("/health")

    ping, health = asyncio.run(scenario())
    assert ping.status_code == 200
    assert health.status_code == 503


# ---- security ----------------------------------------------------------


def test_the_api_key_is_compared_in_constant_time_and_still_guards_every_route(
        make_app, monkeypatch):
    app, _ = make_app(api_key="s3cret-key")
    compared = []
    compare_digest = hmac.compare_digest

    def spy(a, b):
        compared.append((a, b))
        return compare_digest(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)

    async def scenario():
        async with client(app) as http:
            body = {"input": "Who am I?"}
            return [
                await http.post("/v1/embeddings", json=body),
                await http.post("/v1/embeddings", json=body,
                                headers={"Authorization": "Bearer s3cret-kez"}),
                await http.post("/v1/embeddings", json=body,
                                headers={"Authorization": "Bearer s3cret-kéy".encode()}),
                await http.get("/metrics", headers={"Authorization": "Bearer wrong"}),
                await http.post("/v1/embeddings", json=body,
                                headers={"Authorization": "Bearer s3cret-key"}),
                await http.get("/health"),
            ]

    *refused, accepted, health = asyncio.run(scenario())
    for response in refused:
        assert_error(response, 401, "API key")
    assert accepted.status_code == 200 and health.status_code == 200
    assert len(compared) == len(refused) + 1  # every keyed request went through it


@pytest.mark.parametrize("where", ["route", "model"])
def test_a_server_error_answers_without_traceback_or_paths(make_app, monkeypatch, where):
    app, engine = make_app()
    secret = "/srv/secret/cenote/engine.py, line 42"

    def explode(*args, **kwargs):
        raise RuntimeError(f"boom in {secret}")

    if where == "route":
        monkeypatch.setattr(engine, "encode", explode)
    else:
        monkeypatch.setattr(engine.engine.runner, "launch", explode)

    async def scenario():
        async with client(app) as http:
            return await http.post("/v1/embeddings", json={"input": "Break something."})

    response = asyncio.run(scenario())
    assert_error(response, 500)
    for leak in ("/srv", "Traceback", "engine.py", "RuntimeError", "boom"):
        assert leak not in response.text


def test_cors_headers_only_for_allowed_origins(make_app):
    closed, _ = make_app()
    opened, _ = make_app(allowed_origins=["https://app.example"])
    origin = {"Origin": "https://app.example"}
    preflight = {**origin, "Access-Control-Request-Method": "POST"}

    async def scenario(app):
        async with client(app) as http:
            return (await http.get("/v1/models", headers=origin),
                    await http.options("/v1/embeddings", headers=preflight))

    closed_get, closed_preflight = asyncio.run(scenario(closed))
    opened_get, opened_preflight = asyncio.run(scenario(opened))
    assert "access-control-allow-origin" not in closed_get.headers
    assert "access-control-allow-origin" not in closed_preflight.headers
    assert opened_get.headers["access-control-allow-origin"] == "https://app.example"
    assert opened_preflight.status_code == 200
    assert opened_preflight.headers["access-control-allow-origin"] == "https://app.example"


# ---- against a real server with the default limits ---------------------


@pytest.fixture(scope="module")
def server():
    # Default limits; debug logging and the access log on, so the log has every line
    # that could leak input text.
    with cenote_serve(["--log-level", "debug", "--access-log"]) as process:
        yield process


def test_serve_help_documents_every_limit():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "cenote", "serve", "--help"],
                            capture_output=True, text=True, check=True)
    for flag in ["--max-request-body-bytes", "--max-inputs-per-request", "--max-queued-tokens",
                 "--request-timeout", "--engine-stall-timeout", "--allowed-origins",
                 "--log-inputs", "--threads"]:
        assert flag in result.stdout


def test_openmp_threads_spin_briefly_unless_the_user_chose_otherwise():
    import subprocess
    import sys

    probe = ("import cenote, os; "
             "print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'))")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}

    def settings(**chosen: str) -> str:
        return subprocess.run([sys.executable, "-c", probe], env=dict(env, **chosen),
                              capture_output=True, text=True, check=True).stdout.strip()

    assert settings() == "None 3000"
    assert settings(OMP_WAIT_POLICY="PASSIVE") == "PASSIVE None"
    assert settings(GOMP_SPINCOUNT="0") == "None 0"


def test_threads_flag_sets_the_model_threads():
    with cenote_serve(["--threads", "1"]) as process:
        response = httpx.post(f"{process.url}/v1/embeddings", json={"input": "one thread"},
                              timeout=60)
        assert response.status_code == 200
        assert len(response.json()["data"][0]["embedding"]) == 384
        assert "on cpu, 1 thread," in process.log


def test_a_body_declared_over_the_cap_is_413(server):
    body = json.dumps({"input": "x" * (32 * 1024 * 1024)})
    response = httpx.post(f"{server.url}/v1/embeddings", content=body,
                          headers={"content-type": "application/json"}, timeout=60)
    assert_error(response, 413, "larger than this server's limit of 33554432 bytes")


def test_a_chunked_body_over_the_cap_is_413(server):
    def chunks():
        yield b'{"input": "'
        for _ in range(40):
            yield b"x" * (1024 * 1024)
        yield b'"}'

    response = httpx.post(f"{server.url}/v1/embeddings", content=chunks(),
                          headers={"content-type": "application/json"}, timeout=60)
    assert_error(response, 413, "larger than this server's limit")


@pytest.mark.parametrize("path, body", [
    ("/v1/embeddings", {"input": ["a"] * 2049}),
    ("/v1/embeddings", {"input": [[101, 102]] * 2049}),
    ("/pooling", {"input": ["a"] * 2049}),
    ("/score", {"text_1": "q", "text_2": ["a"] * 2049}),
    ("/rerank", {"query": "q", "documents": ["a"] * 2049}),
])
def test_more_inputs_than_the_cap_is_400_naming_the_cap(server, path, body):
    response = httpx.post(f"{server.url}{path}", json=body, timeout=60)
    assert_error(response, 400, "has 2049 items; this server takes at most 2048 per request")


def test_inputs_up_to_the_cap_are_served(server):
    response = httpx.post(f"{server.url}/v1/embeddings", json={"input": ["a"] * 2048},
                          timeout=120)
    assert response.status_code == 200 and len(response.json()["data"]) == 2048


def long_texts(count: int) -> list[str]:
    return [f"Paragraph {i}: " + "the quick brown fox jumps over the lazy dog " * 20
            for i in range(count)]


def test_a_real_client_that_hangs_up_has_its_queued_work_dropped(server):
    texts = long_texts(600)
    processed_before = metric(server, "cenote_tokens_processed_total")
    address = urlparse(server.url)
    body = json.dumps({"input": texts}).encode()
    with socket.create_connection((address.hostname, address.port)) as conn:
        conn.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: cenote\r\n"
                     b"Content-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        deadline = time.monotonic() + 60
        while metric(server, "cenote_queue_waiting_sequences") == 0:
            assert time.monotonic() < deadline, "the request never reached the queue"
    # The socket is closed: the server must notice and drop what still waits.
    deadline = time.monotonic() + 60
    while metric(server, "cenote_queue_waiting_sequences") > 0:
        assert time.monotonic() < deadline, "the queued work was never dropped"
    processed = metric(server, "cenote_tokens_processed_total") - processed_before
    request_tokens = len(texts) * 180  # each text is over 180 tokens
    assert processed < request_tokens / 2
    assert metric(server, "cenote_requests_total", route="/v1/embeddings", status="499") >= 1


def test_logs_never_hold_input_text(server):
    text = f"{CANARY} in a normal request."
    assert httpx.post(f"{server.url}/v1/embeddings", json={"input": text},
                      timeout=60).status_code == 200
    assert httpx.post(f"{server.url}/v1/embeddings", json={"input": [text, ""]},
                      timeout=60).status_code == 400
    assert httpx.post(f"{server.url}/rerank", json={"query": text, "documents": [text]},
                      timeout=60).status_code == 200
    log = server.log
    assert "POST /v1/embeddings" in log  # the access log is on: requests are logged...
    assert "Zebra-canary" not in log  # ...but never what they carry


def sigterm_during_a_big_request(process, texts: list[str]
                                 ) -> tuple[dict[str, httpx.Response | BaseException],
                                            threading.Thread]:
    """Send ``texts`` in one request on a thread, SIGTERM the server once it is queued:
    where its answer (or the exception) will be, and the sending thread."""
    answer: dict[str, httpx.Response | BaseException] = {}

    def send_big_request() -> None:
        try:
            answer["response"] = httpx.post(f"{process.url}/v1/embeddings",
                                            json={"input": texts}, timeout=300)
        except BaseException as exc:  # reported by the callers' assertions
            answer["response"] = exc

    sender = threading.Thread(target=send_big_request)
    sender.start()
    deadline = time.monotonic() + 60
    while metric(process, "cenote_queue_waiting_sequences") == 0:
        assert time.monotonic() < deadline, "the request never reached the queue"
    process.process.send_signal(signal.SIGTERM)
    return answer, sender


def test_sigterm_finishes_the_request_in_flight_then_exits_0():
    texts = [f"{CANARY} {text}" for text in long_texts(150)]
    # A generous timeout: on a loaded machine the drain must not turn into a 504.
    with cenote_serve(["--log-inputs", "--request-timeout", "600"]) as process:
        answer, sender = sigterm_during_a_big_request(process, texts)
        # New requests are refused from now on: 503 while the socket is open, then no socket.
        refusals = []
        while process.process.poll() is None and len(refusals) < 5:
            try:
                response = httpx.get(f"{process.url}/health", timeout=5)
            except httpx.TransportError:
                refusals.append("closed")
                continue
            if response.status_code != 200:
                assert_error(response, 503, "shutting down")
                refusals.append(response.status_code)
        sender.join(300)
        exit_code = process.process.wait(120)
        log = process.log
    response = answer["response"]
    assert isinstance(response, httpx.Response), response
    assert response.status_code == 200, response.text
    assert len(response.json()["data"]) == len(texts)
    assert refusals
    assert exit_code == 0
    assert CANARY in log  # --log-inputs: the bodies are logged


def test_a_draining_server_still_takes_connections_ping_200_health_503():
    texts = long_texts(150)
    with cenote_serve(["--request-timeout", "600"]) as process:
        answer, sender = sigterm_during_a_big_request(process, texts)
        time.sleep(0.5)  # the signal handled: the server drains
        # Each probe on a new connection, as a kubelet's.
        ping = httpx.get(f"{process.url}/ping", timeout=5)
        health = httpx.get(f"{process.url}/health", timeout=5)
        still_in_flight = "response" not in answer
        sender.join(300)
        assert process.process.wait(120) == 0
    assert still_in_flight, "the request ended before the probes: the test proves nothing"
    assert ping.status_code == 200
    assert_error(health, 503, "shutting down")
    assert answer["response"].status_code == 200


def test_the_servers_chat_template_renders_messages(make_app, minilm_bf16):
    # --chat-template: the template requests with messages use when the tokenizer (here
    # MiniLM's) has none.
    app, _ = make_app(chat_template="{% for m in messages %}{{ m.content }} {% endfor %}")
    messages = [{"role": "user", "content": "first"}, {"role": "user", "content": "second"}]

    async def scenario():
        async with client(app) as http:
            chat = await http.post("/v1/embeddings", json={"messages": messages})
            text = await http.post("/v1/embeddings", json={
                "input": "first second ", "add_special_tokens": False})
            return chat.json(), text.json()

    chat, text = asyncio.run(scenario())
    assert chat["data"][0]["embedding"] == text["data"][0]["embedding"]
    assert chat["usage"]["prompt_tokens"] == 2
