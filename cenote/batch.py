"""``cenote run-batch``: OpenAI's batch file format, as ``vllm run-batch`` reads it.

Each input line ``{"custom_id", "method": "POST", "url", "body"}`` runs through the
server's own app (the same routes, validation and errors, in-process), up to
``--max-concurrent-lines`` at a time so lines share batches; each output line
``{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}``
is written (and flushed) in input order as soon as it and every line before it are
done. Input and output stream: a file of any size runs in bounded memory, and a line
longer than ``--max-request-body-bytes`` plus ``ENVELOPE_BYTES`` is skipped unread.

Every line is on its own: whatever one holds (not UTF-8, not JSON, nested too deep, a
``custom_id`` that is not a string, a route that does not exist, too long) becomes that
line's error line ``{"id", "custom_id", "response": null, "error": {"code", "message"}}``
and the rest run. A non-string ``custom_id`` is echoed as given, so it can be found.

``check_batch_files`` refuses, before the model loads, an input that cannot be read and
an output that cannot be written or is the input file itself (which opening it for
writing would empty). ``--resume`` counts the output lines each string ``custom_id``
already has and skips that many of its input lines, in input order, so repeated
custom_ids each run once; lines without a string custom_id cannot be matched and run
again. A half-written last output line (a crash in the middle of it) is dropped and
redone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import stat
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import httpx
from fastapi import FastAPI
from tqdm.auto import tqdm

# The routes a batch line may name (OpenAI's, and vLLM's pooling ones).
BATCH_URLS = frozenset({"/v1/embeddings", "/v1/score", "/score", "/v1/rerank", "/rerank",
                        "/v2/rerank", "/classify", "/pooling", "/v2/embed", "/v1/embed",
                        "/invocations", "/embed", "/embed_all", "/embed_sparse", "/similarity",
                        "/predict"})

# A line may be this much longer than --max-request-body-bytes: room for its custom_id,
# method and url around the body.
ENVELOPE_BYTES = 64 * 1024
# The rest of a line over the limit is read and dropped in chunks of at most this size.
_SKIP_CHUNK_BYTES = 1024 * 1024


def check_batch_files(args: argparse.Namespace) -> str | None:
    """Why ``args.input_file`` / ``args.output_file`` cannot be used, or None when they
    can; called before the model loads, and changes no file."""
    source, target = args.input_file, args.output_file
    if source != "-":
        if not os.path.exists(source):
            return f"run-batch: input file {source} does not exist"
        if os.path.isdir(source):
            return f"run-batch: input file {source} is a directory"
        if not os.access(source, os.R_OK):
            return f"run-batch: input file {source} cannot be read"
    if target != "-":
        folder = os.path.dirname(os.path.abspath(target))
        if os.path.isdir(target):
            return f"run-batch: output file {target} is a directory"
        if not os.path.isdir(folder):
            return f"run-batch: the folder of output file {target} ({folder}) does not exist"
        if not os.access(target if os.path.exists(target) else folder, os.W_OK):
            return f"run-batch: output file {target} cannot be written"
    source_file, target_file = _regular_file(source, 0), _regular_file(target, 1)
    if source_file is not None and source_file == target_file:
        return (f"run-batch: output file {target} is the input file "
                f"{'(stdin)' if source == '-' else source}; writing it would empty the "
                f"input. Choose another -o.")
    return None


def _regular_file(name: str, fd: int) -> tuple[int, int] | None:
    """(device, inode) of the regular file ``name`` (for ``-``, open as ``fd``), else None;
    two names of one file (a symlink, a hard link, a shell redirection) give the same."""
    try:
        info = os.fstat(fd) if name == "-" else os.stat(name)
    except OSError:
        return None
    return (info.st_dev, info.st_ino) if stat.S_ISREG(info.st_mode) else None


def run_batch(app: FastAPI, args: argparse.Namespace) -> int:
    """Run ``args.input_file`` through ``app``; 0 when every line was answered (error
    lines included), 1 when the files cannot be read or written, 2 when
    ``check_batch_files`` refuses them."""
    if problem := check_batch_files(args):
        print(problem, file=sys.stderr)
        return 2
    try:
        return asyncio.run(_run(app, args))
    except OSError as exc:
        print(f"run-batch: {exc}", file=sys.stderr)
        return 1


async def _run(app: FastAPI, args: argparse.Namespace) -> int:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a log line per input line
    finished = _finished_counts(Path(args.output_file)) if args.resume else Counter()
    max_line_bytes = args.max_request_body_bytes + ENVELOPE_BYTES
    async with app.router.lifespan_context(app):  # starts the engine, warms it up
        # An exception in the app answers 500, as over HTTP, instead of ending the batch.
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://batch",
                                     timeout=None) as client:
            with _input(args.input_file) as file, \
                    _output(args.output_file, append=args.resume) as out, \
                    tqdm(desc="run-batch", unit="line", disable=args.output_file == "-") as bar:
                pending: list[asyncio.Task] = []
                for number, raw in enumerate(input_lines(file, max_line_bytes), 1):
                    if raw is not None and not raw.strip():
                        continue
                    line = _parse(raw, number, max_line_bytes)
                    custom_id = line.custom_id if isinstance(line, _LineError) else \
                        line.get("custom_id")
                    if isinstance(custom_id, str) and finished[custom_id] > 0:
                        finished[custom_id] -= 1  # answered by the run being resumed
                        continue
                    pending.append(asyncio.create_task(_answer(client, number, line)))
                    if len(pending) >= args.max_concurrent_lines:
                        await _write(pending.pop(0), out, bar)
                for task in pending:
                    await _write(task, out, bar)
    return 0


def input_lines(file: IO[bytes], max_line_bytes: int) -> Iterator[bytes | None]:
    """Each line of ``file`` (with its newline), or None for a line longer than
    ``max_line_bytes``: no read asks for more than ``max_line_bytes + 1`` bytes, and the
    rest of a long line is read and dropped, so a line of any length costs bounded memory."""
    while line := file.readline(max_line_bytes + 1):
        if len(line) <= max_line_bytes or line.endswith(b"\n"):
            yield line
            continue
        while line and not line.endswith(b"\n"):
            line = file.readline(min(max_line_bytes + 1, _SKIP_CHUNK_BYTES))
        yield None


class _LineError(Exception):
    """Why an input line cannot run; it becomes the line's error line."""

    def __init__(self, message: str, custom_id: Any = None,
                 code: str = "invalid_request") -> None:
        super().__init__(message)
        self.message, self.custom_id, self.code = message, custom_id, code


def _parse(raw: bytes | None, number: int, max_line_bytes: int
           ) -> dict[str, Any] | _LineError:
    """The request of input line ``number`` (None: a line over the limit), or why it
    cannot run, whatever the line holds."""
    try:
        return _request(raw, number, max_line_bytes)
    except _LineError as error:
        return error
    except Exception as exc:  # unforeseen, and still only this line's failure
        return _LineError(f"line {number}: {type(exc).__name__}: {exc}")


def _request(raw: bytes | None, number: int, max_line_bytes: int) -> dict[str, Any]:
    if raw is None:
        raise _LineError(f"line {number} is longer than {max_line_bytes} bytes "
                         f"(--max-request-body-bytes plus {ENVELOPE_BYTES} for the envelope)",
                         code="request_too_large")
    try:
        request = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise _LineError(f"line {number} is not UTF-8: {exc}") from None
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
        raise _LineError(f"line {number} is not JSON: {exc}") from None
    if not isinstance(request, dict):
        raise _LineError(f"line {number} is not a JSON object")
    custom_id = request.get("custom_id")
    if custom_id is not None and not isinstance(custom_id, str):
        raise _LineError(f"custom_id must be a string (line {number})", custom_id)
    url, method = request.get("url"), str(request.get("method", "POST")).upper()
    if not isinstance(url, str) or url not in BATCH_URLS or method != "POST":
        raise _LineError(f"line {number}: {method} {url!r} is not a batch route "
                         f"(POST one of {', '.join(sorted(BATCH_URLS))})", custom_id)
    if not isinstance(request.get("body"), dict):
        raise _LineError(f"line {number}: body must be a JSON object", custom_id)
    return request


# A line answered 429 or 503 with Retry-After is sent again, up to this many times.
_RETRIES = 5
_MAX_RETRY_WAIT_S = 30.0


async def _answer(client: httpx.AsyncClient, number: int,
                  line: dict[str, Any] | _LineError) -> str:
    """The output line of input line ``number``: the app's answer, or an error line;
    never an exception, which would end the batch."""
    line_id = f"batch_req_{uuid.uuid4().hex}"
    if isinstance(line, _LineError):
        return _error_line(line_id, line.custom_id, line.code, line.message)
    custom_id = line.get("custom_id")
    try:
        response = await _post(client, line, line_id)
    except ValueError as exc:  # a body JSON cannot carry (NaN, Infinity)
        return _error_line(line_id, custom_id, "invalid_request", f"body: {exc}")
    except Exception as exc:  # unforeseen, and still only this line's failure
        return _error_line(line_id, custom_id, "internal_error",
                           f"line {number}: {type(exc).__name__}: {exc}")
    try:
        body = response.json()
    except ValueError:  # a 500 of an exception in the app is plain text
        body = {"message": response.text}
    return _serialised({"id": line_id, "custom_id": custom_id,
                        "response": {"status_code": response.status_code,
                                     "request_id": line_id, "body": body},
                        "error": None})


async def _post(client: httpx.AsyncClient, request: dict[str, Any],
                line_id: str) -> httpx.Response:
    for attempt in range(_RETRIES + 1):
        response = await client.post(request["url"], json=request["body"],
                                     headers={"X-Request-Id": line_id})
        # Busy (429), or its engine process died and restarts (503): come back later,
        # as a client of the server would, rather than write off the line.
        retry_after = response.headers.get("Retry-After")
        if response.status_code not in (429, 503) or not retry_after or attempt == _RETRIES:
            break
        await asyncio.sleep(min(float(retry_after), _MAX_RETRY_WAIT_S))
    return response


def _error_line(line_id: str, custom_id: Any, code: str, message: str) -> str:
    return _serialised({"id": line_id, "custom_id": custom_id, "response": None,
                        "error": {"code": code, "message": message}})


def _serialised(answer: dict[str, Any]) -> str:
    try:
        return json.dumps(answer) + "\n"
    except RecursionError:  # a custom_id nested nearly as deep as the parser allows
        return json.dumps({**answer, "custom_id": None}) + "\n"


async def _write(task: asyncio.Task, out: IO[str], bar: tqdm) -> None:
    out.write(await task)
    out.flush()
    bar.update()


def _finished_counts(path: Path) -> Counter[str]:
    """How many lines ``path`` already holds for each string custom_id; a half-written
    last line (a crash in the middle of it) is cut off, so its line runs again."""
    finished: Counter[str] = Counter()
    if not path.is_file():
        return finished
    keep = 0
    with path.open("rb") as file:
        for raw in file:
            if not raw.endswith(b"\n"):
                break
            keep += len(raw)
            try:
                custom_id = json.loads(raw).get("custom_id")
            except (ValueError, AttributeError, RecursionError):
                continue  # not a line run-batch wrote: kept, and matches no input line
            if isinstance(custom_id, str):  # others cannot be told apart: they run again
                finished[custom_id] += 1
    with path.open("r+b") as file:
        file.truncate(keep)
    return finished


@contextmanager
def _input(name: str) -> Iterator[IO[bytes]]:
    """The input, in bytes: each line is decoded on its own, so one that is not UTF-8
    fails alone."""
    if name == "-":
        yield sys.stdin.buffer
        return
    with open(name, "rb") as file:
        yield file


@contextmanager
def _output(name: str, append: bool) -> Iterator[IO[str]]:
    if name == "-":
        yield sys.stdout
        return
    with open(name, "a" if append else "w", encoding="utf-8") as file:
        yield file
