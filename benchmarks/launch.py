"""Start a server process for a benchmark, wait until ``/health`` answers, stop it after."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx

# The environment the benchmark started with, taken before it imports cenote
# (which sets OMP_WAIT_POLICY for its own process): a baseline server runs at
# its own defaults, and cenote sets its own.
USER_ENV = dict(os.environ)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Launched:
    """A healthy server: its base URL, its process, and how long it took to get healthy."""

    url: str
    process: subprocess.Popen
    startup_s: float
    exit_code: int | None = None


@contextmanager
def launched(command: list[str], port: int, timeout_s: float = 300) -> Iterator[Launched]:
    """Run ``command`` (a server listening on ``port``) until the block ends.

    Its output goes to a temporary file (a pipe nobody reads would fill and block
    the server); the file's tail is in the error if the server exits or never
    gets healthy. On leaving, SIGTERM, then the exit code in ``exit_code``.
    """
    env = dict(USER_ENV, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    with tempfile.TemporaryFile() as log:
        start = time.monotonic()
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        server = Launched(f"http://127.0.0.1:{port}", process, 0.0)

        def tail() -> str:
            log.seek(0)
            return log.read().decode(errors="replace")[-2000:]

        try:
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"{command[:4]} exited with {process.returncode}:\n"
                                       f"{tail()}")
                try:
                    if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() - start > timeout_s:
                    raise RuntimeError(f"{command[:4]} did not become healthy:\n{tail()}")
                time.sleep(0.05)
            server.startup_s = time.monotonic() - start
            yield server
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                server.exit_code = process.wait(120)
            except subprocess.TimeoutExpired:
                process.kill()
