"""What ``encoding_format`` costs: float JSON vs base64 vs bytes on ``/v1/embeddings``.

Starts ``cenote serve`` (the bundled all-MiniLM-L6-v2 unless --model), then for each
format sends the same requests (--requests of --inputs-per-request real English
sentences, from --concurrency clients) and prints requests/s, bytes on the wire per
request (body plus the ``metadata`` header of ``bytes``) and both as ratios to float
JSON. The client decodes every answer into a numpy array, as a real client must, so
the figures include each format's decoding as well as the server's encoding. The
formats run in turns of --turn requests, so that a drift of the machine's speed falls
on all of them alike.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/encoding_formats.py
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from launch import free_port, launched  # noqa: E402
from serve_load import corpus  # noqa: E402

FORMATS = ("float", "base64", "bytes")


@dataclass
class Tally:
    seconds: float = 0.0
    requests: int = 0
    wire_bytes: int = 0

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds

    @property
    def bytes_per_request(self) -> float:
        return self.wire_bytes / self.requests


def decoded(response: httpx.Response, encoding_format: str) -> tuple[np.ndarray, int]:
    """The answer's vectors as one array, and the bytes it took on the wire."""
    if encoding_format == "bytes":
        metadata = response.headers["metadata"]
        items = json.loads(metadata)["data"]
        body = response.content
        vectors = np.stack([np.frombuffer(body[i["start"]:i["end"]], dtype=np.float32)
                            for i in items])
        return vectors, len(body) + len("metadata: \r\n") + len(metadata)
    data = response.json()["data"]
    if encoding_format == "base64":
        vectors = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype=np.float32)
                            for d in data])
    else:
        vectors = np.array([d["embedding"] for d in data], dtype=np.float32)
    return vectors, len(response.content)


async def post(http: httpx.AsyncClient, encoding_format: str, inputs: list[str]
               ) -> tuple[np.ndarray, int]:
    body = {"model": "bench", "input": inputs, "encoding_format": encoding_format}
    response = await http.post("/v1/embeddings", json=body)
    if response.status_code != 200:
        raise RuntimeError(f"{encoding_format}: {response.status_code} {response.text[:300]}")
    return decoded(response, encoding_format)


async def turn(http: httpx.AsyncClient, encoding_format: str, texts: list[list[str]],
               concurrency: int, tally: Tally) -> None:
    """Send ``texts`` (one list per request) from ``concurrency`` clients, back to back."""
    requests = iter(texts)

    async def client() -> None:
        for inputs in requests:
            _, size = await post(http, encoding_format, inputs)
            tally.wire_bytes += size
            tally.requests += 1

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    tally.seconds += time.perf_counter() - started


async def measure(url: str, args, sentences: list[str]) -> dict[str, Tally]:
    k = args.inputs_per_request
    texts = [[sentences[(i * k + j) % len(sentences)] for j in range(k)]
             for i in range(args.requests)]
    tallies = {name: Tally() for name in FORMATS}
    limits = httpx.Limits(max_connections=args.concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as http:
        # Warm-up, not counted; every format must carry the same float32 values.
        reference, _ = await post(http, "float", texts[0])
        for name in FORMATS:
            if not np.array_equal((await post(http, name, texts[0]))[0], reference):
                raise RuntimeError(f"{name} decoded to other vectors than float JSON")
            await turn(http, name, texts[:args.concurrency], args.concurrency, Tally())
        for start in range(0, args.requests, args.turn):
            for name in FORMATS:
                await turn(http, name, texts[start:start + args.turn], args.concurrency,
                           tallies[name])
    return tallies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="default: the bundled all-MiniLM-L6-v2")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--inputs-per-request", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--turn", type=int, default=20,
                        help="requests of one format before the next format's turn")
    parser.add_argument("--cenote-args", default="", help="more `cenote serve` options")
    args = parser.parse_args()

    from cenote.config import default_model_path

    model_dir = str(args.model or default_model_path())
    sentences, _ = corpus(model_dir, 256)
    print(f"model {model_dir}; {args.requests} requests of {args.inputs_per_request} "
          f"sentences per format, {args.concurrency} clients; {os.cpu_count()} CPUs")
    port = free_port()
    command = [sys.executable, "-m", "cenote", "serve", model_dir, "--host", "127.0.0.1",
               "--port", str(port), "--served-model-name", "bench", *args.cenote_args.split()]
    with launched(command, port) as server:
        tallies = asyncio.run(measure(server.url, args, sentences))
    reference = tallies["float"]
    print(f"\n{'format':<8} {'req/s':>7} {'x float':>8} {'bytes/request':>14} {'x float':>8}")
    for name, tally in tallies.items():
        print(f"{name:<8} {tally.requests_per_s:>7.2f} "
              f"{tally.requests_per_s / reference.requests_per_s:>8.2f} "
              f"{tally.bytes_per_request:>14,.0f} "
              f"{tally.bytes_per_request / reference.bytes_per_request:>8.3f}")


if __name__ == "__main__":
    main()
