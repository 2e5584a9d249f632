"""``cenote run-batch``: OpenAI's batch file format, as ``vllm run-batch`` reads it.

Each input line ``{"custom_id", "method": "POST", "url", "body"}`` runs through the
server's own app (the same routes, validation and errors, in-process), up to
``--max-concurrent-lines`` at a time so lines share batches; each output line
``{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}``
is written in input order as soon as it and every line before it are done. Input
and output stream: a file of any size runs in bounded memory. A line that is not
JSON or names a route that does not exist becomes an error line; the rest run.
``--resume`` skips the custom_ids the output already holds (a crash loses no
finished line; a half-written last line is dropped and redone).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import httpx
from fastapi import FastAPI
from tqdm.auto import tqdm

# The routes a batch line may name (OpenAI's, and vLLM's pooling ones).
BATCH_URLS = frozenset({"/v1/embeddings", "/v1/score", "/score", "/v1/rerank", "/rerank",
                        "/v2/rerank", "/classify", "/pooling", "/v2/embed", "/embed_sparse"})


def run_batch(app: FastAPI, args: argparse.Namespace) -> int:
    """Run ``args.input_file`` through ``app``; 0 when every line was answered (error
    lines included), 1 when the files cannot be read or written."""
    try:
        return asyncio.run(_run(app, args))
    except OSError as exc:
        print(f"run-batch: {exc}", file=sys.stderr)
        return 1


async def _run(app: FastAPI, args: argparse.Namespace) -> int:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a log line per input line
    done = _finished_ids(Path(args.output_file)) if args.resume else set()
    async with app.router.lifespan_context(app):  # starts the engine, warms it up
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://batch",
                                     timeout=None) as client:
            with _input(args.input_file) as lines, \
                    _output(args.output_file, append=args.resume) as out, \
                    tqdm(desc="run-batch", unit="line", disable=args.output_file == "-") as bar:
                pending: list[asyncio.Task] = []
                for number, line in enumerate(lines, 1):
                    if not line.strip():
                        continue
                    request = _parse(line, number)
                    if request.get("custom_id") in done:
                        continue
                    pending.append(asyncio.create_task(_answer(client, request)))
                    if len(pending) >= args.max_concurrent_lines:
                        await _write(pending.pop(0), out, bar)
                for task in pending:
                    await _write(task, out, bar)
    return 0


def _parse(line: str, number: int) -> dict[str, Any]:
    """The request of a line, or a record of why it cannot run."""
    try:
        request = json.loads(line)
    except json.JSONDecodeError as exc:
        return {"_error": f"line {number} is not JSON: {exc}"}
    if not isinstance(request, dict):
        return {"_error": f"line {number} is not a JSON object"}
    url, method = request.get("url"), str(request.get("method", "POST")).upper()
    if url not in BATCH_URLS or method != "POST":
        return {**request, "_error": f"line {number}: {method} {url!r} is not a batch route "
                                     f"(POST one of {', '.join(sorted(BATCH_URLS))})"}
    if not isinstance(request.get("body"), dict):
        return {**request, "_error": f"line {number}: body must be a JSON object"}
    return request


# A line answered 429 or 503 with Retry-After is sent again, up to this many times.
_RETRIES = 5
_MAX_RETRY_WAIT_S = 30.0


async def _answer(client: httpx.AsyncClient, request: dict[str, Any]) -> dict[str, Any]:
    line_id = f"batch_req_{uuid.uuid4().hex}"
    custom_id = request.get("custom_id")
    if "_error" in request:
        return {"id": line_id, "custom_id": custom_id, "response": None,
                "error": {"code": "invalid_request", "message": request["_error"]}}
    try:
        for attempt in range(_RETRIES + 1):
            response = await client.post(request["url"], json=request["body"],
                                         headers={"X-Request-Id": line_id})
            # Busy (429), or its engine process died and restarts (503): come back later,
            # as a client of the server would, rather than write off the line.
            retry_after = response.headers.get("Retry-After")
            if response.status_code not in (429, 503) or not retry_after or attempt == _RETRIES:
                break
            await asyncio.sleep(min(float(retry_after), _MAX_RETRY_WAIT_S))
    except ValueError as exc:  # a body JSON cannot carry (NaN, Infinity)
        return {"id": line_id, "custom_id": custom_id, "response": None,
                "error": {"code": "invalid_request", "message": f"body: {exc}"}}
    try:
        body = response.json()
    except ValueError:  # not expected: every answer of the app is JSON
        body = {"message": response.text}
    return {"id": line_id, "custom_id": custom_id,
            "response": {"status_code": response.status_code, "request_id": line_id,
                         "body": body},
            "error": None}


async def _write(task: asyncio.Task, out: IO[str], bar: tqdm) -> None:
    out.write(json.dumps(await task) + "\n")
    out.flush()
    bar.update()


def _finished_ids(path: Path) -> set[Any]:
    """The custom_ids ``path`` already answers; a half-written last line (a crash in
    the middle of it) is cut off, so its line runs again."""
    if not path.is_file():
        return set()
    done, keep = set(), 0
    with path.open("rb") as file:
        for raw in file:
            if not raw.endswith(b"\n"):
                break
            try:
                custom_id = json.loads(raw)["custom_id"]
            except (ValueError, KeyError, TypeError):
                break
            if custom_id is not None:  # lines without one cannot be told apart: they rerun
                done.add(custom_id)
            keep += len(raw)
    with path.open("r+b") as file:
        file.truncate(keep)
    return done


@contextmanager
def _input(name: str) -> Iterator[Iterator[str]]:
    if name == "-":
        yield iter(sys.stdin)
        return
    with open(name, encoding="utf-8") as file:
        yield iter(file)


@contextmanager
def _output(name: str, append: bool) -> Iterator[IO[str]]:
    if name == "-":
        yield sys.stdout
        return
    with open(name, "a" if append else "w", encoding="utf-8") as file:
        yield file
