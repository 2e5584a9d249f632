"""Start-up: seconds from ``cenote serve`` to a healthy ``/health``, then the first answer.

Starts the server on the bundled all-MiniLM-L6-v2 (or --model) several times
and prints each start's time to a 200 from ``/health`` and the latency of the
first embedding request after it. Target (issue 6): under 15 s. cenote
compiles nothing at start-up, so there is no compilation cache to warm: the
first start pays only for Python imports and the OS page cache.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/startup.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from launch import free_port, launched  # noqa: E402

TARGET_S = 15.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder (default: bundled MiniLM)")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    from cenote.config import default_model_path

    model = str(args.model or default_model_path())
    startups = []
    for run in range(1, args.runs + 1):
        port = free_port()
        command = [sys.executable, "-m", "cenote", "serve", model, "--host", "127.0.0.1",
                   "--port", str(port)]
        with launched(command, port) as server, httpx.Client(timeout=60) as client:
            # The client exists before the clock starts: building one (its TLS context)
            # costs ~20 ms of the caller's time, not the server's.
            start = time.perf_counter()
            response = client.post(f"{server.url}/v1/embeddings",
                                   json={"input": "The first request after start-up."})
            first_ms = (time.perf_counter() - start) * 1e3
            response.raise_for_status()
        startups.append(server.startup_s)
        print(f"run {run}: healthy after {server.startup_s:.2f} s; first embedding "
              f"{first_ms:.0f} ms; exit code {server.exit_code}")
    median = statistics.median(startups)
    met = "met" if max(startups) < TARGET_S else "NOT met"
    print(f"median {median:.2f} s, worst {max(startups):.2f} s "
          f"(target < {TARGET_S:g} s: {met})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
