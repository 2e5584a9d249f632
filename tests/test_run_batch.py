"""``cenote run-batch``: OpenAI's batch format through the server's own routes, in input
order, bad lines as error lines, and a crash resumed without losing finished lines."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from cenote.batch import input_lines
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


def refused(*args, stdin=None):
    """Run run-batch, expect exit code 2 (a refusal), return what it printed on stderr."""
    command = [sys.executable, "-m", "cenote", "run-batch", *map(str, args)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    done = subprocess.run(command, env=env, stdin=stdin, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, timeout=600)
    assert done.returncode == 2, done.stderr
    return done.stderr


def request_line(custom_id, text="a line between hostile ones"):
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/embeddings",
                       "body": {"input": text}}).encode()


@pytest.mark.parametrize(("hostile", "custom_id", "message"), [
    (request_line(["a", 1]), ["a", 1], "custom_id must be a string"),
    (request_line({"k": "v"}), {"k": "v"}, "custom_id must be a string"),
    (b'{"custom_id": "latin-1 \xe9", "url": "/v1/embeddings", "body": {"input": "x"}}',
     None, "line 2 is not UTF-8"),
    (b"[" * 100_000, None, "line 2 is not JSON"),  # nested deeper than the parser goes
])
def test_a_hostile_line_is_an_error_line_and_the_lines_around_it_run(tmp_path, hostile,
                                                                     custom_id, message):
    source, target = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_bytes(b"\n".join([request_line("before"), hostile, request_line("after")])
                       + b"\n")
    run_batch("-i", source, "-o", target)
    before, answer, after = read_lines(target)
    assert before["custom_id"] == "before" and before["response"]["status_code"] == 200
    assert after["custom_id"] == "after" and after["response"]["status_code"] == 200
    assert answer["custom_id"] == custom_id and answer["response"] is None
    assert answer["error"]["code"] == "invalid_request"
    assert answer["error"]["message"].startswith(message)


def test_resume_runs_again_only_what_the_output_lacks_even_past_non_string_custom_ids(
        tmp_path):
    source, target = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_bytes(b"\n".join([request_line("a"), request_line([1, 2]), request_line("b")])
                       + b"\n")
    target.write_text(json.dumps({"id": "batch_req_earlier", "custom_id": "a",
                                  "response": None, "error": None}) + "\n")
    run_batch("-i", source, "-o", target, "--resume")
    ids = [line["custom_id"] for line in read_lines(target)]
    assert ids == ["a", [1, 2], "b"]


def test_resume_runs_each_occurrence_of_a_repeated_custom_id_once(tmp_path):
    source, target = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_bytes(b"\n".join([request_line("a", "first"), request_line("a", "second"),
                                   request_line("b"), request_line("a", "third")]) + b"\n")
    earlier = {"id": "batch_req_earlier", "custom_id": "a", "response": None, "error": None}
    target.write_text(2 * (json.dumps(earlier) + "\n"))  # the first two lines were answered
    run_batch("-i", source, "-o", target, "--resume")
    lines = read_lines(target)
    assert [line["custom_id"] for line in lines] == ["a", "a", "b", "a"]
    assert lines[2]["response"]["status_code"] == lines[3]["response"]["status_code"] == 200


@pytest.mark.parametrize("spelling", ["same path", "symlink", "hard link", "stdin"])
def test_an_output_that_is_the_input_is_refused_and_the_input_kept(tmp_path, spelling):
    source = tmp_path / "in.jsonl"
    write_requests(source, TEXTS[:3])
    content = source.read_bytes()
    if spelling == "stdin":
        with source.open("rb") as stdin:
            stderr = refused("-i", "-", "-o", source, stdin=stdin)
    else:
        target = {"same path": tmp_path / "." / "in.jsonl",
                  "symlink": tmp_path / "link.jsonl",
                  "hard link": tmp_path / "hard.jsonl"}[spelling]
        if spelling == "symlink":
            target.symlink_to(source)
        elif spelling == "hard link":
            target.hardlink_to(source)
        stderr = refused("-i", source, "-o", target)
    assert "is the input file" in stderr
    assert source.read_bytes() == content


@pytest.mark.parametrize(("input_name", "output_name", "message"), [
    ("in.jsonl", "no-such-folder/out.jsonl", "does not exist"),
    ("in.jsonl", ".", "is a directory"),
    ("missing.jsonl", "out.jsonl", "does not exist"),
    (".", "out.jsonl", "is a directory"),
])
def test_unusable_files_are_refused_before_the_model_loads(tmp_path, input_name, output_name,
                                                           message):
    write_requests(tmp_path / "in.jsonl", TEXTS[:1])
    # A model that does not exist: loading it first would fail with another message.
    stderr = refused(tmp_path / "no-such-model", "-i", tmp_path / input_name,
                     "-o", tmp_path / output_name)
    assert message in stderr and "Cannot load the model" not in stderr


def test_a_line_longer_than_the_cap_is_an_error_line_and_the_next_lines_run(tmp_path):
    source, target = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    with source.open("wb") as file:
        file.write(request_line("huge", "word " * ((64 << 20) // 5)) + b"\n")
        file.write(request_line("small") + b"\n")
    run_batch("-i", source, "-o", target, "--max-request-body-bytes", 4096)
    huge, small = read_lines(target)
    assert huge["response"] is None and huge["error"]["code"] == "request_too_large"
    assert huge["error"]["message"].startswith("line 1 is longer than")
    assert small["custom_id"] == "small" and small["response"]["status_code"] == 200


class RecordedReads(io.BytesIO):
    """A binary file that records the size of every read it is asked for."""

    def __init__(self, data):
        super().__init__(data)
        self.sizes = []

    def readline(self, size=-1):
        self.sizes.append(size)
        return super().readline(size)

    def read(self, size=-1):
        self.sizes.append(size)
        return super().read(size)


def test_the_line_reader_never_reads_more_than_the_cap_at_once():
    cap = 100
    file = RecordedReads(b"short\n" + b"x" * 10_000 + b"\n" + b"last")
    assert list(input_lines(file, cap)) == [b"short\n", None, b"last"]
    assert all(0 < size <= cap + 1 for size in file.sizes)
