"""Server load: ``cenote serve`` against FastAPI + sentence-transformers, in one run.

Starts each server in turn on the same model folder (the bundled
all-MiniLM-L6-v2 unless --model), drives it with an asyncio + httpx load
generator speaking the OpenAI embeddings API (base64, as the openai client
sends by default), and prints one table. Scenarios:

- load: N requests from C concurrent clients, K inputs per request
  (default 32 concurrent single-sentence clients);
- idle: one client, one short sentence per request, back to back;
- fairness: the idle client again while another client keeps sending
  requests of 2000 paragraphs; its p99 is compared with the idle p99.

Real English: sentences and paragraphs from the documentation that the
installed packages ship. The load generator shares the machine with the
server, as it would in a single-box deployment.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/serve_load.py
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import multiprocessing
import os
import queue as queue_module
import re
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event as EventType
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from corpus import english_paragraphs  # noqa: E402
from launch import free_port, launched  # noqa: E402

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass
class Result:
    server: str
    scenario: str
    inputs_per_request: int
    concurrency: int
    seconds: float
    latencies: list[float]

    @property
    def requests_per_s(self) -> float:
        return len(self.latencies) / self.seconds

    @property
    def inputs_per_s(self) -> float:
        return self.requests_per_s * self.inputs_per_request

    def percentile_ms(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return 1000 * ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def corpus(model_dir: str, max_tokens: int) -> tuple[list[str], list[str]]:
    """(sentences, paragraphs) that fit the model whole, so both servers do the same work."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    paragraphs = [p for p in english_paragraphs(3000)
                  if len(tokenizer(p)["input_ids"]) <= max_tokens]
    sentences = [s for p in paragraphs for s in _SENTENCE_END.split(p)
                 if 6 <= len(s.split()) <= 25]
    return sentences, paragraphs


async def drive(url: str, inputs: Callable[[int], list[str]], num_requests: int,
                concurrency: int, server: str, scenario: str,
                stop: Callable[[], bool] = lambda: False) -> Result:
    """Closed loop: ``concurrency`` clients send requests back to back until done
    (or until ``stop()`` says so, checked before each request)."""
    latencies: list[float] = []
    counter = itertools.count()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=900, limits=limits) as http:
        async def client() -> None:
            while (i := next(counter)) < num_requests and not stop():
                body = {"model": "bench", "input": inputs(i), "encoding_format": "base64"}
                started = time.perf_counter()
                response = await http.post("/v1/embeddings", json=body)
                latencies.append(time.perf_counter() - started)
                if response.status_code != 200:
                    raise RuntimeError(f"{server} answered {response.status_code}: "
                                       f"{response.text[:300]}")

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    size = len(inputs(0))
    return Result(server, scenario, size, concurrency, seconds, latencies)


def big_client(url: str, server: str, paragraphs: list[str], size: int,
               sending: EventType, stop: EventType, results: Queue) -> None:
    """The bulk client, in a process of its own so that building its megabyte
    bodies and reading its answers never stalls the measured client's loop."""
    def big(i: int) -> list[str]:
        if i == 0:
            sending.set()
        return [paragraphs[(i * 7 + j) % len(paragraphs)] for j in range(size)]

    results.put(asyncio.run(drive(url, big, 10**9, 1, server, f"{size}-text requests",
                                  stop.is_set)))


def result_of(process: multiprocessing.Process, queue: Queue) -> Result:
    """The bulk client's result once its in-flight request is answered; an error if it died."""
    while True:
        try:
            result = queue.get(timeout=1)
        except queue_module.Empty:
            if not process.is_alive():
                raise RuntimeError(f"the bulk client failed (exit code {process.exitcode}); "
                                   "its error is printed above") from None
            continue
        process.join()
        return result


async def scenarios(url: str, server: str, args, sentences: list[str],
                    paragraphs: list[str]) -> list[Result]:
    def sentence(i: int) -> list[str]:
        return [sentences[i % len(sentences)]]

    def load_inputs(i: int) -> list[str]:
        k = args.inputs_per_request
        return [sentences[(i * k + j) % len(sentences)] for j in range(k)]

    # Warm-up: both servers get the same untimed traffic first.
    await drive(url, sentence, 64, 8, server, "warm-up")
    results = [await drive(url, load_inputs, args.requests, args.concurrency, server,
                           f"load: {args.concurrency} concurrent clients")]
    results.append(await drive(url, sentence, args.idle_requests, 1, server,
                               "idle: one client"))
    if args.big_inputs:
        context = multiprocessing.get_context("spawn")
        sending, stop, queue = context.Event(), context.Event(), context.Queue()
        process = context.Process(target=big_client, args=(
            url, server, paragraphs, args.big_inputs, sending, stop, queue))
        process.start()
        await asyncio.to_thread(sending.wait)
        await asyncio.sleep(args.fairness_lead_s)  # let the big request get going
        results.append(await drive(url, sentence, args.idle_requests, 1, server,
                                   f"one client beside {args.big_inputs}-text requests"))
        stop.set()
        results.append(await asyncio.to_thread(result_of, process, queue))

    return results


def print_table(results: list[Result]) -> None:
    print("| server | scenario | inputs/request | clients | requests | req/s | inputs/s "
          "| p50 ms | p99 ms |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r.server} | {r.scenario} | {r.inputs_per_request} | {r.concurrency} "
              f"| {len(r.latencies)} | {r.requests_per_s:.1f} | {r.inputs_per_s:.1f} "
              f"| {r.percentile_ms(50):.1f} | {r.percentile_ms(99):.1f} |")


def offline_inputs_per_s(model_dir: str, texts: list[str]) -> float:
    """``LLM.embed`` on the texts of the load scenario, in this process, with the server
    stopped: the offline throughput the server's is compared with."""
    from cenote import LLM

    llm = LLM(model_dir)
    llm.embed(texts[:256], use_tqdm=False)
    started = time.perf_counter()
    llm.embed(texts, use_tqdm=False)
    return len(texts) / (time.perf_counter() - started)


def print_targets(by_server: dict[str, list[Result]], args, offline: float | None) -> None:
    cenote, baseline = by_server.get("cenote"), by_server.get("sentence-transformers")
    if cenote and baseline:
        ratio = cenote[0].requests_per_s / baseline[0].requests_per_s
        print(f"- load throughput, cenote / baseline: {ratio:.2f}x (target >= 4x)")
    if cenote and offline:
        print(f"- load throughput, cenote server / offline LLM.embed on the same texts: "
              f"{cenote[0].inputs_per_s:.0f} / {offline:.0f} inputs/s = "
              f"{cenote[0].inputs_per_s / offline:.0%} (target >= 60 % with 32-text requests)")
    for name, results in by_server.items():
        if cenote and name.startswith("cenote -dp"):
            print(f"- {name} / cenote (one engine): load "
                  f"{results[0].requests_per_s / cenote[0].requests_per_s:.2f}x")
    for name, results in by_server.items():
        idle = results[1]
        line = f"- {name}: idle p50 {idle.percentile_ms(50):.1f} ms (target <= 10 ms)"
        if len(results) > 2:
            loaded = results[2]
            ratio = loaded.percentile_ms(99) / idle.percentile_ms(99)
            line += (f"; p99 beside {args.big_inputs}-text requests / idle p99 = "
                     f"{ratio:.1f}x (target <= 5x)")
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder (default: bundled MiniLM)")
    parser.add_argument("--requests", type=int, default=2000,
                        help="requests in the load scenario")
    parser.add_argument("--concurrency", type=int, default=32,
                        help="concurrent clients in the load scenario")
    parser.add_argument("--inputs-per-request", type=int, default=1,
                        help="texts per request in the load scenario")
    parser.add_argument("--idle-requests", type=int, default=300,
                        help="requests of the one-client scenarios")
    parser.add_argument("--big-inputs", type=int, default=2000,
                        help="texts per request of the big client (0: skip fairness)")
    parser.add_argument("--fairness-lead-s", type=float, default=1.0,
                        help="seconds the big client runs before the small one starts")
    parser.add_argument("--cenote-args", default="",
                        help="extra `cenote serve` arguments, e.g. '--dtype float32'")
    parser.add_argument("--data-parallel-sizes", default="1",
                        help="cenote runs once per size, e.g. '1,2' (--data-parallel-size)")
    parser.add_argument("--servers", default="sentence-transformers,cenote",
                        help="which servers to run, comma-separated")
    parser.add_argument("--offline", action="store_true",
                        help="also time LLM.embed on the load scenario's texts and print the "
                             "server's share of that throughput")
    args = parser.parse_args()

    from cenote.config import default_model_path

    model_dir = str(args.model or default_model_path())
    sentences, paragraphs = corpus(model_dir, 256)
    print(f"model {model_dir}; {len(sentences)} sentences, {len(paragraphs)} paragraphs; "
          f"{os.cpu_count()} CPUs")
    def cenote(size: int) -> Callable[[int], list[str]]:
        return lambda port: [
            sys.executable, "-m", "cenote", "serve", model_dir, "--host", "127.0.0.1",
            "--port", str(port), "--served-model-name", "bench",
            "--data-parallel-size", str(size), *shlex.split(args.cenote_args)]

    commands = {
        "sentence-transformers": lambda port: [
            sys.executable, str(HERE / "st_baseline_server.py"), model_dir, "--port", str(port)],
    }
    for size in map(int, args.data_parallel_sizes.split(",")):
        commands["cenote" if size == 1 else f"cenote -dp {size}"] = cenote(size)
    names = [n for name in args.servers.split(",")
             for n in (commands if name == "cenote" else [name]) if n.startswith(name)]
    by_server: dict[str, list[Result]] = {}
    for name in names:
        port = free_port()
        with launched(commands[name](port), port) as server:
            by_server[name] = asyncio.run(scenarios(server.url, name, args, sentences,
                                                    paragraphs))
    print()
    print_table([r for results in by_server.values() for r in results])
    offline = None
    if args.offline:
        k = args.inputs_per_request
        texts = [sentences[(i * k + j) % len(sentences)]
                 for i in range(args.requests) for j in range(k)]
        offline = offline_inputs_per_s(model_dir, texts)
    print()
    print_targets(by_server, args, offline)


if __name__ == "__main__":
    main()
