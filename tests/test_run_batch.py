"""``cenote run-batch``: OpenAI's batch format through the server's own routes, in input
order, bad lines as error lines, and a crash resumed without losing finished lines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from cenote.machine import cpu_has_native_bf16

TEXTS = [f"Batch sentence number {i} is about rivers and towns." for i in range(300)]


def write_requests(path, texts, extra=()):
    with path.open("w") as file:
        for i, text in enumerate(texts):
            file.write(json.dumps({"custom_id": f"req-{i}", "method": "POST",
                                   "url": "/v1/embeddings", "body": {"input": text}}) + "\n")
        for line in extra:
            file.write(line + "\n")


def run_batch(*args, wait=True):
    command = [sys.executable, "-m", "cenote", "run-batch", *map(str, args)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    if wait:
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr
    return process


def read_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_lines_are_answered_in_input_order_and_bad_lines_become_error_lines(tmp_path,
                                                                             minilm_bf16):
    source, target = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_requests(source, TEXTS[:20], extra=[
        "this line is not JSON",
        json.dumps({"custom_id": "wrong-url", "method": "POST", "url": "/v1/completions",
                    "body": {"prompt": "x"}}),
        json.dumps({"custom_id": "rejected", "method": "POST", "url": "/v1/embeddings",
                    "body": {"input": ""}}),
        json.dumps({"custom_id": "scores", "method": "POST", "url": "/v1/score",
                    "body": {"text_1": "rivers", "text_2": ["towns", "stars"]}}),
    ])
    run_batch("-i", source, "-o", target)
    lines = read_lines(target)
    assert [line["custom_id"] for line in lines] == (
        [f"req-{i}" for i in range(20)] + [None, "wrong-url", "rejected", "scores"])
    expected = minilm_bf16.embed(TEXTS[:20], use_tqdm=False)
    for line, out in zip(lines[:20], expected, strict=True):
        assert line["error"] is None and line["response"]["status_code"] == 200
        got = torch.tensor(line["response"]["body"]["data"][0]["embedding"])
        assert torch.allclose(got, torch.tensor(out.outputs.embedding), atol=1e-3)
    assert lines[20]["error"]["message"].startswith("line 21 is not JSON")
    assert "/v1/completions" in lines[21]["error"]["message"]
    assert lines[22]["response"]["status_code"] == 400
    assert "empty string" in lines[22]["response"]["body"]["error"]["message"]
    assert len(lines[23]["response"]["body"]["data"]) == 2


def test_a_run_killed_in_the_middle_resumes_without_losing_or_repeating_lines(tmp_path):
    source, target = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_requests(source, TEXTS)
    process = run_batch("-i", source, "-o", target, "--max-concurrent-lines", 4, wait=False)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and (
            not target.exists() or len(target.read_text().splitlines()) < 30):
        assert process.poll() is None, "run-batch ended before it could be killed"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = len(read_lines(target))
    assert 30 <= finished < len(TEXTS)
    with target.open("a") as file:
        file.write('{"id": "batch_req_half-written", "custom_')  # a crash mid-line
    run_batch("-i", source, "-o", target, "--resume")
    resumed = read_lines(target)
    assert [line["custom_id"] for line in resumed] == [f"req-{i}" for i in range(len(TEXTS))]
    # Uninterrupted, and through two data-parallel engine processes: the same results.
    uninterrupted = tmp_path / "whole.jsonl"
    run_batch("-i", source, "-o", uninterrupted, "--data-parallel-size", 2)
    # bf16 kernels may round differently on another thread count (one per engine here).
    atol = 2e-3 if cpu_has_native_bf16() else 1e-5
    for a, b in zip(resumed, read_lines(uninterrupted), strict=True):
        assert a["response"]["status_code"] == b["response"]["status_code"] == 200
        assert torch.allclose(torch.tensor(a["response"]["body"]["data"][0]["embedding"]),
                              torch.tensor(b["response"]["body"]["data"][0]["embedding"]),
                              atol=atol)


@pytest.mark.parametrize("line", [
    '[1, 2]',
    json.dumps({"custom_id": "x", "url": "/v1/embeddings", "body": "text"}),
    '{"custom_id": "nan", "url": "/v1/embeddings", "body": {"input": "x", "dimensions": NaN}}',
])
def test_a_line_of_the_wrong_shape_is_an_error_line(tmp_path, line):
    source, target = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text(line + "\n")
    run_batch("-i", source, "-o", target)
    (answer,) = read_lines(target)
    assert answer["response"] is None and answer["error"]["code"] == "invalid_request"
