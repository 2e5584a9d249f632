"""Soak: thousands of mixed requests against one ``cenote serve``; does it stay sound?

Starts ``cenote serve`` (the bundled all-MiniLM-L6-v2 unless --model), warms it
up with the same traffic until its memory settles, then sends N requests from C
concurrent clients:
embeddings (one text or a batch, float or base64, token ids), /pooling,
/tokenize + /detokenize, /score, /rerank, and about one in ten malformed on
purpose (bad JSON, wrong types, empty or too-long text, out-of-vocabulary ids,
too many inputs, an unknown model). Each kind has the status it should get;
429 (admission control) is allowed for all.

Reports answers by kind and status, anything unexpected (5xx, wrong status,
dropped connections), throughput, and the server's resident memory (VmRSS)
after warm-up, every 500 requests and at the end. Targets: nothing
unexpected, RSS growth after warm-up under 10 %, measured peak to peak: the
highest of the last samples (the last two and the end) against the highest of
the last two warm-up rounds. RSS bounces by tens of MiB as batches come and
go (glibc returns freed heap in steps, see ``cenote/engine/memory.py``), so
one sample against one sample says more about where each landed than about
growth; a leak raises the peaks.

With ``--hostile-share 0.1`` the same N requests run twice after warm-up: once
normal traffic only, once with a tenth of the requests hostile (a million
wrongly-typed score items, a 30 MB string, a body of 200,000 tiny arrays, 1-bit
PNG bombs as rerank documents, a body that stops arriving); it then reports the
normal clients' p50/p99 in each phase, the server's peak RSS in each, and the
slowest /health answer (probed every 100 ms) in each. Targets (issue 28): peak
RSS with hostile traffic <= 2x the normal-only peak, /health <= 1 s, normal p99
<= 3x its normal-only value.

The warm-up runs in rounds of 500 requests until two rounds in a row grow RSS
by less than 2 % each: on CPU, oneDNN compiles and caches a kernel per matmul
shape, and batches come in many token counts (bucketed, see
``cenote.models.layers.bucket_rows``), so RSS climbs until every bucket that
the traffic reaches has its kernels, and then stays flat.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/soak.py --requests 4000
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/soak.py --requests 2000 --hostile-share 0.1
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import itertools
import json
import os
import random
import shlex
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from launch import free_port, launched  # noqa: E402
from serve_load import corpus  # noqa: E402

MODEL_NAME = "soak"
WARMUP_ROUND = 500
# The path of a request whose body stops arriving (sent on a raw connection).
SLOW_BODY = "/v1/embeddings#slow"


@dataclass
class Call:
    """One request: its kind, route, body (JSON value or raw bytes) and expected status."""

    kind: str
    path: str
    body: object
    expected: int = 200
    num_inputs: int = 1
    hostile: bool = False


@dataclass
class Tally:
    """What came back, by kind and status; unexpected answers with a sample of each."""

    statuses: Counter = field(default_factory=Counter)
    unexpected: Counter = field(default_factory=Counter)
    samples: dict[tuple[str, str], str] = field(default_factory=dict)
    inputs: int = 0
    # Seconds each answered non-hostile request took, and the slowest /health.
    latencies: list[float] = field(default_factory=list)
    slowest_health: float = 0.0

    def record(self, call: Call, status: str, text: str, seconds: float = 0.0) -> None:
        if not call.hostile and status.isdigit():
            self.latencies.append(seconds)
        self.statuses[(call.kind, status)] += 1
        if status not in (str(call.expected), "429"):
            self.unexpected[(call.kind, status)] += 1
            self.samples.setdefault((call.kind, status), text[:200])


class Workload:
    """The request mix, drawn from real sentences and paragraphs with a fixed seed."""

    def __init__(self, sentences: list[str], paragraphs: list[str], token_ids: list[list[int]],
                 seed: int, hostile_share: float = 0.0) -> None:
        self.hostile_share = hostile_share
        self._hostile: list[Call] | None = None
        self.sentences = sentences
        self.paragraphs = paragraphs
        self.token_ids = token_ids
        self.random = random.Random(seed)
        kinds: list[tuple[Callable[[], Call], int]] = [
            (self.embed_one_float, 25), (self.embed_one_base64, 15),
            (self.embed_batch_base64, 15), (self.embed_batch_float, 5),
            (self.embed_paragraphs, 4), (self.embed_token_ids, 5), (self.pooling, 5),
            (self.tokenize, 3), (self.detokenize, 2), (self.score, 5), (self.rerank, 6),
            (self.malformed, 10),
        ]
        self.makers = [maker for maker, _ in kinds]
        self.weights = [weight for _, weight in kinds]

    def next(self) -> Call:
        if self.hostile_share and self.random.random() < self.hostile_share:
            return self.hostile()
        return self.random.choices(self.makers, self.weights)[0]()

    def hostile(self) -> Call:
        """One of the attacks of issue 28, its body made once and sent as bytes."""
        if self._hostile is None:
            from PIL import Image

            buffer = io.BytesIO()
            Image.new("1", (6000, 6000)).save(buffer, "PNG", optimize=True)
            bomb = {"content": [{"type": "image_url", "image_url": {
                "url": "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()}}]}
            self._hostile = [
                Call("hostile: 1e6 wrong-typed items", "/score",
                     json.dumps({"text_1": "a", "text_2": list(range(10**6))}).encode(), 400,
                     hostile=True),
                Call("hostile: 30 MB string", "/v1/embeddings",
                     json.dumps({"input": "flood " * 5_000_000}).encode(), 400, hostile=True),
                Call("hostile: 200k tiny arrays", "/v1/embeddings",
                     json.dumps({"input": [[1]] * 200_000}).encode(), 400, hostile=True),
                Call("hostile: 8 PNG bombs", "/rerank",
                     json.dumps({"query": "q", "documents": [bomb] * 8}).encode(), 400,
                     hostile=True),
                Call("hostile: body never completes", SLOW_BODY, b'{"input": "', 408,
                     hostile=True),
            ]
        return self.random.choice(self._hostile)

    def _sentences(self, k: int) -> list[str]:
        return self.random.sample(self.sentences, k)

    def embed_one_float(self) -> Call:
        return Call("embed 1 float", "/v1/embeddings",
                    {"model": MODEL_NAME, "input": self._sentences(1)[0]})

    def embed_one_base64(self) -> Call:
        return Call("embed 1 base64", "/v1/embeddings",
                    {"model": MODEL_NAME, "input": self._sentences(1), "encoding_format": "base64"})

    def embed_batch_base64(self) -> Call:
        return Call("embed 32 base64", "/v1/embeddings",
                    {"input": self._sentences(32), "encoding_format": "base64"}, num_inputs=32)

    def embed_batch_float(self) -> Call:
        return Call("embed 8 float", "/v1/embeddings", {"input": self._sentences(8)},
                    num_inputs=8)

    def embed_paragraphs(self) -> Call:
        return Call("embed 64 paragraphs", "/v1/embeddings",
                    {"input": self.random.sample(self.paragraphs, 64),
                     "encoding_format": "base64"}, num_inputs=64)

    def embed_token_ids(self) -> Call:
        return Call("embed token ids", "/v1/embeddings",
                    {"input": self.random.sample(self.token_ids, 4)}, num_inputs=4)

    def pooling(self) -> Call:
        return Call("pooling", "/pooling", {"input": self._sentences(2)})

    def tokenize(self) -> Call:
        return Call("tokenize", "/tokenize",
                    {"prompt": self._sentences(1)[0], "return_token_strs": True})

    def detokenize(self) -> Call:
        return Call("detokenize", "/detokenize", {"tokens": self.random.choice(self.token_ids)})

    def score(self) -> Call:
        query, *docs = self._sentences(5)
        return Call("score 1:4", "/score", {"text_1": query, "text_2": docs})

    def rerank(self) -> Call:
        query, *docs = self._sentences(9)
        return Call("rerank 8", "/v1/rerank", {"query": query, "documents": docs, "top_n": 3})

    def malformed(self) -> Call:
        bad = self.random.choice([
            Call("bad: not JSON", "/v1/embeddings", b'{"input": ["unclosed', 400),
            Call("bad: invalid UTF-8", "/v1/embeddings", b'{"input": "\xff\xfe"}', 400),
            Call("bad: wrong type", "/v1/embeddings", {"input": 5}, 400),
            Call("bad: NaN dimensions", "/v1/embeddings", b'{"input": "a", "dimensions": NaN}',
                 400),
            Call("bad: empty text", "/v1/embeddings", {"input": ["fine", ""]}, 400),
            Call("bad: too long", "/v1/embeddings", {"input": "word " * 400}, 400),
            Call("bad: out of vocabulary", "/v1/embeddings", {"input": [101, 10**9, 102]}, 400),
            Call("bad: too many inputs", "/v1/embeddings", {"input": ["a"] * 2049}, 400),
            Call("bad: unknown model", "/v1/embeddings", {"model": "nope", "input": "a"}, 404),
            Call("bad: unsupported route", "/classify", {"input": "a"}, 400),
            Call("bad: lone surrogate", "/rerank", b'{"query": "\\ud800", "documents": ["a"]}',
                 400),
        ])
        return bad


async def drive(url: str, workload: Workload, num_requests: int, concurrency: int,
                on_tick: Callable[[], None] = lambda: None) -> tuple[Tally, float]:
    """Closed loop: ``concurrency`` clients send requests back to back."""
    tally = Tally()
    counter = itertools.count()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as http:
        async def client() -> None:
            while next(counter) < num_requests:
                call = workload.next()
                sent = time.perf_counter()
                if call.path == SLOW_BODY:
                    status = await slow_body(url, call.body)
                    tally.record(call, status, status, time.perf_counter() - sent)
                    on_tick()
                    continue
                content = call.body if isinstance(call.body, bytes) else json.dumps(
                    call.body).encode()
                try:
                    response = await http.post(call.path, content=content,
                                               headers={"content-type": "application/json"})
                except httpx.HTTPError as exc:
                    tally.record(call, type(exc).__name__, str(exc))
                    continue
                tally.record(call, str(response.status_code), response.text,
                             time.perf_counter() - sent)
                if response.status_code == 200 and call.path == "/v1/embeddings":
                    tally.inputs += call.num_inputs
                on_tick()

        async def probe_health(done: asyncio.Event) -> None:
            async with httpx.AsyncClient(base_url=url, timeout=60) as probe:
                while not done.is_set():
                    sent = time.perf_counter()
                    await probe.get("/health")
                    tally.slowest_health = max(tally.slowest_health,
                                               time.perf_counter() - sent)
                    await asyncio.sleep(0.1)

        done = asyncio.Event()
        prober = asyncio.ensure_future(probe_health(done))
        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
        done.set()
        await prober
    return tally, seconds


async def slow_body(url: str, partial: bytes) -> str:
    """Declare a 1000-byte body, send a few bytes of it and stop: the status line the
    server answers with (it should give up on the body by itself)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(b"POST /v1/embeddings HTTP/1.1\r\nHost: soak\r\nContent-Type: "
                     b"application/json\r\nContent-Length: 1000\r\n\r\n" + partial)
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 300)
        return line.split()[1].decode() if line.startswith(b"HTTP/") else "no answer"
    except (OSError, asyncio.TimeoutError) as exc:
        return type(exc).__name__
    finally:
        writer.close()


def rss_mib(pid: int, field_name: str = "VmRSS") -> float:
    """Resident memory of ``pid`` (VmRSS; VmHWM: its peak so far), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field_name} for process {pid}")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def hostile_phases(url: str, pid: int, workload: Workload, args: argparse.Namespace) -> bool:
    """The same traffic without and with the hostile share: the comparison table."""
    rows, share = {}, workload.hostile_share
    for name, hostile in (("normal only", 0.0), (f"{share:.0%} hostile", share)):
        workload.hostile_share = hostile
        before_peak = rss_mib(pid)
        peak = [before_peak]

        def sample(peak: list[float] = peak) -> None:
            peak.append(rss_mib(pid))

        tally, seconds = asyncio.run(drive(url, workload, args.requests, args.concurrency,
                                           sample))
        rows[name] = (tally, seconds, max(peak), rss_mib(pid))
    print("\n| phase | normal p50 (ms) | normal p99 (ms) | slowest /health (ms) | "
          "RSS peak (MiB) | RSS after (MiB) | unexpected |\n|---|---:|---:|---:|---:|---:|---:|")
    for name, (tally, _, peak, after) in rows.items():
        print(f"| {name} | {percentile(tally.latencies, 0.5) * 1000:.0f} | "
              f"{percentile(tally.latencies, 0.99) * 1000:.0f} | "
              f"{tally.slowest_health * 1000:.0f} | {peak:.0f} | {after:.0f} | "
              f"{sum(tally.unexpected.values())} |")
    (normal, _, normal_peak, _), (mixed, _, mixed_peak, _) = rows.values()
    for (kind, status), text in mixed.samples.items():
        print(f"  {kind} -> {status} (x{mixed.unexpected[(kind, status)]}): {text}")
    hostile_counts = Counter()
    for (kind, status), count in mixed.statuses.items():
        if kind.startswith("hostile"):
            hostile_counts[f"{kind} -> {status}"] += count
    print("hostile requests: " + ", ".join(f"{k}: {n}" for k, n in sorted(hostile_counts.items())))
    p99_ratio = percentile(mixed.latencies, 0.99) / percentile(normal.latencies, 0.99)
    targets = {
        "RSS peak <= 2x normal-only": mixed_peak <= 2 * normal_peak,
        "/health <= 1 s": max(normal.slowest_health, mixed.slowest_health) <= 1.0,
        f"normal p99 <= 3x normal-only (x{p99_ratio:.2f})": p99_ratio <= 3,
        "no unexpected answers": not mixed.unexpected and not normal.unexpected,
    }
    print("targets: " + "; ".join(f"{name} ({'met' if ok else 'MISSED'})"
                                  for name, ok in targets.items()))
    return all(targets.values())


def print_report(tally: Tally, seconds: float, num_requests: int, rss: dict[str, float]) -> bool:
    print(f"\n{num_requests} requests in {seconds:.1f} s: {num_requests / seconds:.1f} req/s, "
          f"{tally.inputs / seconds:.1f} embedded inputs/s")
    print("\n| kind | status | count |\n|---|---|---:|")
    for (kind, status), count in sorted(tally.statuses.items()):
        print(f"| {kind} | {status} | {count} |")
    by_status = Counter()
    for (_, status), count in tally.statuses.items():
        by_status[status] += count
    print("\nby status: " + ", ".join(f"{s}: {n}" for s, n in sorted(by_status.items())))
    unexpected = sum(tally.unexpected.values())
    print(f"unexpected answers: {unexpected}")
    for (kind, status), text in tally.samples.items():
        print(f"  {kind} -> {status} (x{tally.unexpected[(kind, status)]}): {text}")
    end_growth = (rss["end"] - rss["warm"]) / rss["warm"] * 100
    growth = (rss["late_peak"] - rss["warm_peak"]) / rss["warm_peak"] * 100
    print(f"\nserver RSS: {rss['start']:.0f} MiB when ready, {rss['warm']:.0f} MiB after "
          f"warm-up, peak {rss['peak']:.0f} MiB, {rss['end']:.0f} MiB at the end "
          f"({end_growth:+.1f} % end vs warm-up); peak of the last samples "
          f"{rss['late_peak']:.0f} MiB vs warm-up peak {rss['warm_peak']:.0f} MiB "
          f"({growth:+.1f} %)")
    ok = unexpected == 0 and growth < 10
    print(f"\ntargets: no unexpected answers ({'met' if unexpected == 0 else 'MISSED'}); "
          f"RSS growth after warm-up, peak to peak, < 10 % "
          f"({'met' if growth < 10 else 'MISSED'})")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder (default: bundled MiniLM)")
    parser.add_argument("--requests", type=int, default=4000, help="requests after warm-up")
    parser.add_argument("--max-warmup-requests", type=int, default=8000,
                        help="warm-up stops here even if RSS still climbs")
    parser.add_argument("--concurrency", type=int, default=64, help="concurrent clients")
    parser.add_argument("--seed", type=int, default=0, help="seed of the request mix")
    parser.add_argument("--hostile-share", type=float, default=0.0,
                        help="with e.g. 0.1: run the requests without, then with this share "
                             "of hostile ones, and compare")
    parser.add_argument("--cenote-args", default="",
                        help="extra `cenote serve` arguments, e.g. '--max-queued-tokens 20000'")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from cenote.config import default_model_path

    model_dir = str(args.model or default_model_path())
    sentences, paragraphs = corpus(model_dir, 256)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    token_ids = [tokenizer(s)["input_ids"] for s in sentences[:200]]
    print(f"model {model_dir}; {len(sentences)} sentences, {len(paragraphs)} paragraphs; "
          f"{os.cpu_count()} CPUs; {args.concurrency} concurrent clients")
    workload = Workload(sentences, paragraphs, token_ids, args.seed)
    hostile_share, workload.hostile_share = args.hostile_share, 0.0
    port = free_port()
    command = [sys.executable, "-m", "cenote", "serve", model_dir, "--host", "127.0.0.1",
               "--port", str(port), "--served-model-name", MODEL_NAME,
               *shlex.split(args.cenote_args)]
    with launched(command, port) as server:
        url, process = server.url, server.process
        rss = {"start": rss_mib(process.pid)}
        warm_rss, warmed, warm_unexpected = [rss["start"]], 0, 0
        while warmed < args.max_warmup_requests:
            warm, _ = asyncio.run(drive(url, workload, WARMUP_ROUND, args.concurrency))
            warmed += WARMUP_ROUND
            warm_unexpected += sum(warm.unexpected.values())
            warm_rss.append(rss_mib(process.pid))
            # Two flat rounds in a row: one can be flat by chance while new batch
            # shapes (and their kernels) still turn up.
            if len(warm_rss) >= 3 and all(warm_rss[i] < 1.02 * warm_rss[i - 1] for i in (-1, -2)):
                break
        print(f"warm-up: {warmed} requests ({warm_unexpected} unexpected answers); RSS (MiB) "
              + " -> ".join(f"{m:.0f}" for m in warm_rss))
        if hostile_share:
            workload.hostile_share = hostile_share
            ok = hostile_phases(url, process.pid, workload, args)
            healthy = httpx.get(f"{url}/health", timeout=10).status_code == 200
            print(f"healthy at the end: {healthy}")
            return 0 if ok and healthy else 1
        rss["warm"] = rss["peak"] = warm_rss[-1]
        rss["warm_peak"] = max(warm_rss[-2:])
        ticks = itertools.count(1)
        trajectory = []

        def sample_rss() -> None:
            if next(ticks) % 500 == 0:
                trajectory.append(rss_mib(process.pid))
                rss["peak"] = max(rss["peak"], trajectory[-1])

        tally, seconds = asyncio.run(drive(url, workload, args.requests, args.concurrency,
                                           sample_rss))
        rss["end"] = rss_mib(process.pid)
        rss["peak"] = max(rss["peak"], rss["end"])
        rss["late_peak"] = max([*trajectory[-2:], rss["end"]])
        healthy = httpx.get(f"{url}/health", timeout=10).status_code == 200
        ok = print_report(tally, seconds, args.requests, rss)
        print("RSS every 500 requests (MiB): " + ", ".join(f"{m:.0f}" for m in trajectory))
        print(f"healthy at the end: {healthy}")
    print(f"server exit code after SIGTERM: {server.exit_code}")
    return 0 if ok and healthy and server.exit_code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
