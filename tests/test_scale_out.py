"""Past one engine: ``cenote serve --data-parallel-size 2`` (engine processes behind one
front end, an engine killed under load) and several models in one server, each
driven through the real server process with the openai client and plain HTTP."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from tests.serving import cenote_serve, metric

TEXTS = [f"Request {r} sentence {k}: the {w} crossed the river at dawn."
         for r in range(16) for k, w in enumerate(["farmer", "pianist", "sailor", "baker"])]


@pytest.fixture(scope="module")
def reference(minilm_path):
    from cenote import LLM

    llm = LLM(str(minilm_path), dtype="float32")
    return {t: o.outputs.embedding for t, o in zip(TEXTS, llm.embed(TEXTS), strict=True)}


@pytest.fixture(scope="module")
def dp_server(minilm_path):
    with cenote_serve([str(minilm_path), "--dtype", "float32", "--data-parallel-size", "2",
                       "--served-model-name", "mini"]) as server:
        yield server


def _client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def _engine_pids(server_pid: int) -> list[int]:
    """The engine processes: the server's children started by multiprocessing's spawn."""
    pids = []
    for task in Path(f"/proc/{server_pid}/task").iterdir():
        children = (task / "children").read_text().split()
        pids += [int(pid) for pid in children]
    return [pid for pid in pids if b"spawn_main" in _cmdline(pid)
            and b"resource_tracker" not in _cmdline(pid)]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _embed(server, texts: list[str]) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/embeddings", json={"model": "mini", "input": texts},
                      timeout=60)


def test_data_parallel_engines_answer_as_one_engine(dp_server, reference):
    assert re.search(r"data-parallel engine 0: \d+ thread\(s\)", dp_server.log)
    assert len(_engine_pids(dp_server.process.pid)) == 2
    client = _client(dp_server)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(
            lambda k: client.embeddings.create(model="mini", input=TEXTS[4 * k:4 * k + 4]),
            range(16)))
    for k, answer in enumerate(answers):
        got = np.array([d.embedding for d in answer.data])
        want = np.array([reference[t] for t in TEXTS[4 * k:4 * k + 4]])
        np.testing.assert_allclose(got, want, atol=1e-5)
    # Both engines ran batches, and the metrics say which.
    for engine in ("0", "1"):
        assert metric(dp_server, "cenote_batch_tokens_count", model="mini", engine=engine) > 0
    assert metric(dp_server, "cenote_engines_alive", model="mini") == 2
    assert httpx.get(f"{dp_server.url}/health").status_code == 200


def test_an_engine_killed_under_load_fails_only_its_requests_and_comes_back(dp_server,
                                                                           reference):
    victim = _engine_pids(dp_server.process.pid)[0]

    def one(k: int) -> tuple[int, httpx.Response]:
        return k, _embed(dp_server, TEXTS[4 * k:4 * k + 4] * 4)

    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(one, k) for k in range(16)]
        time.sleep(0.3)
        os.kill(victim, signal.SIGKILL)
        degraded = None
        deadline = time.monotonic() + 5
        while degraded is None and time.monotonic() < deadline:
            health = httpx.get(f"{dp_server.url}/health", timeout=5)
            if health.status_code == 200 and health.content:
                degraded = health.json()
            time.sleep(0.05)
        results = [f.result(timeout=120) for f in futures]  # none hangs
    assert degraded == {"status": "degraded",
                        "engines": [{"model": "mini", "alive": 1, "total": 2}]}
    statuses = sorted(r.status_code for _, r in results)
    assert set(statuses) <= {200, 503}, statuses
    assert 200 in statuses  # the other engine went on
    assert 503 in statuses  # the killed one held requests (16 x 16 texts take seconds)
    for k, response in results:
        if response.status_code == 503:
            assert int(response.headers["Retry-After"]) > 0
            assert "died" in response.json()["error"]["message"]
            continue
        got = np.array([d["embedding"] for d in response.json()["data"]])
        want = np.array([reference[t] for t in TEXTS[4 * k:4 * k + 4] * 4])
        np.testing.assert_allclose(got, want, atol=1e-5)  # each answer to its own client
    # The engine comes back: full capacity, a new process, and requests served by both.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        health = httpx.get(f"{dp_server.url}/health", timeout=5)
        if health.status_code == 200 and not health.content:
            break
        time.sleep(0.5)
    assert health.status_code == 200 and not health.content, health.text
    pids = _engine_pids(dp_server.process.pid)
    assert len(pids) == 2 and victim not in pids
    assert "died; failing its" in dp_server.log and "is back" in dp_server.log
    with ThreadPoolExecutor(4) as pool:
        again = list(pool.map(lambda k: _embed(dp_server, TEXTS[4 * k:4 * k + 4]), range(8)))
    assert all(r.status_code == 200 for r in again)


def test_sigterm_stops_every_engine_process(dp_server):
    # The module's last use of this server: it ends here.
    pids = _engine_pids(dp_server.process.pid)
    assert len(pids) == 2
    dp_server.process.send_signal(signal.SIGTERM)
    assert dp_server.process.wait(60) == 0
    for pid in pids:
        deadline = time.monotonic() + 10
        while _cmdline(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _cmdline(pid), f"engine process {pid} outlived the server"


@pytest.fixture(scope="module")
def two_model_server(minilm_path, cross_encoder_path):
    with cenote_serve(["--model", str(minilm_path), "--served-model-name", "mini", "minilm",
                       "--model", str(cross_encoder_path), "--served-model-name", "judge",
                       "--dtype", "float32"]) as server:
        yield server


def test_several_models_are_served_each_by_its_own_engine(two_model_server, reference,
                                                          cross_encoder_path):
    from cenote import LLM

    client = _client(two_model_server)
    listed = [(m.id, m.root) for m in client.models.list().data]
    assert listed == [("mini", "mini"), ("minilm", "mini"), ("judge", "judge")]
    embedded = client.embeddings.create(model="minilm", input=TEXTS[:3])
    assert embedded.model == "minilm"
    np.testing.assert_allclose([d.embedding for d in embedded.data],
                               [reference[t] for t in TEXTS[:3]], atol=1e-5)
    # The cross-encoder scores pairs; the embedding model's /score is a cosine.
    body = {"text_1": "Where is the river?", "text_2": TEXTS[:2]}
    judged = httpx.post(f"{two_model_server.url}/score", json={**body, "model": "judge"})
    assert judged.status_code == 200 and judged.json()["model"] == "judge"
    want = [o.outputs.score for o in LLM(str(cross_encoder_path), dtype="float32").score(
        body["text_1"], body["text_2"])]
    np.testing.assert_allclose([d["score"] for d in judged.json()["data"]], want, atol=1e-5)
    cosine = httpx.post(f"{two_model_server.url}/score", json={**body, "model": "mini"})
    assert cosine.status_code == 200
    assert [d["score"] for d in cosine.json()["data"]] != [d["score"] for d in
                                                           judged.json()["data"]]
    # A route the model does not serve, an unknown model, no model (the first one).
    refused = httpx.post(f"{two_model_server.url}/v1/embeddings",
                         json={"model": "judge", "input": "x"})
    assert refused.status_code == 400
    unknown = httpx.post(f"{two_model_server.url}/v1/embeddings",
                         json={"model": "nope", "input": "x"})
    assert unknown.status_code == 404
    default = httpx.post(f"{two_model_server.url}/v1/embeddings", json={"input": "x"})
    assert default.status_code == 200 and default.json()["model"] == "mini"
    assert metric(two_model_server, "cenote_batch_tokens_count", model="judge") > 0
    assert metric(two_model_server, "cenote_batch_tokens_count", model="mini") > 0


@pytest.mark.parametrize("args, message", [
    (["--model", "a", "--model", "b", "--served-model-name", "x"],
     "2 models and 1 --served-model-name"),
    (["--data-parallel-size", "0"], "0 is not positive"),
])
def test_scale_out_options_are_checked_before_loading(args, message):
    result = subprocess.run([sys.executable, "-m", "cenote", "serve", *args],
                            capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert result.returncode == 2
    assert message in result.stderr
