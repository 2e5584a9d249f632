"""An engine in a process of its own: the child's side (a :class:`PoolingEngine` and an
:class:`EngineCore`, driven by messages on a pipe) and the parent's handle on it.

Messages are pickled tuples. Parent to child: ``("run", id, records, task)``,
``("withdraw", id)``, ``("stop",)``. Child to parent: ``("ready", output_width)`` or
``("failed", message)`` once loaded, then ``("done", id, outputs or error)`` per request
and ``("batch", BatchStats)`` per batch. The standard pickler is used on purpose: the
one ``multiprocessing`` uses would move tensors through shared-memory files.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import pickle
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cenote.config import ModelConfig
from cenote.engine.core import (
    BatchFailedError,
    BatchStats,
    CoreRequest,
    EngineCore,
    EngineStoppedError,
    Outcome,
    QueueFullError,
)
from cenote.engine.engine import PoolingEngine, warmup_records
from cenote.engine.model_thread import ModelThread

logger = logging.getLogger(__name__)

# Fork is unsafe in a process with threads and an OpenMP runtime: children start fresh.
_SPAWN = multiprocessing.get_context("spawn")


@dataclass(frozen=True)
class Placement:
    """Where one engine runs: its number, and its torch threads (on a CPU) or its device
    (``cuda:K``)."""

    index: int
    threads: int | None = None
    device: str | None = None

    def describe(self) -> str:
        if self.device is not None:
            return f"engine {self.index} on {self.device}"
        return f"engine {self.index}: {self.threads} thread(s)"


def placements(config: ModelConfig, count: int) -> list[Placement]:
    """``count`` engines: on CUDA one per visible GPU, round robin (several per GPU when
    ``count`` is larger); on a CPU the torch threads are split between them. Engines are
    not pinned to cores: the front end shares them, and on 2 cores pinned engines
    served 0.63x of one engine's load, unpinned 1.00x (benchmarks/README.md)."""
    if config.device.type == "cuda":
        gpus = max(1, torch.cuda.device_count())
        return [Placement(i, device=f"cuda:{i % gpus}") for i in range(count)]
    threads = max(1, torch.get_num_threads() // count)
    return [Placement(i, threads) for i in range(count)]


class Channel:
    """One end of the pipe: pickled messages, sent whole from any thread."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self._lock = threading.Lock()

    def send(self, message: tuple) -> None:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        with self._lock:
            self.conn.send_bytes(data)

    def recv(self) -> tuple:
        """The next message; ``EOFError`` once the other end is gone."""
        return pickle.loads(self.conn.recv_bytes())


class EngineProcess:
    """The parent's handle on one engine process: spawn it, wait until it has loaded
    the model, then exchange messages with it."""

    def __init__(self, config: ModelConfig, placement: Placement,
                 max_queue_seconds: float | None = None) -> None:
        self.placement = placement
        conn, child_conn = _SPAWN.Pipe()
        self._channel = Channel(conn)
        self._process = _SPAWN.Process(
            target=_engine_main, args=(config, placement, max_queue_seconds, child_conn),
            name=f"cenote-engine-{placement.index}", daemon=True)
        self._process.start()
        child_conn.close()  # the child's end lives in the child: EOF here once it exits

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def wait_ready(self, abandon: Callable[[], bool] = lambda: False) -> int | None:
        """Block until the model is loaded; its output width. ``ValueError`` when it
        could not load, ``EngineStoppedError`` when the process died first or
        ``abandon()`` turned true meanwhile (a shutdown)."""
        try:
            while not self._channel.conn.poll(0.5):
                if abandon():
                    raise EngineStoppedError("The engine is shutting down.")
                if not self._process.is_alive():
                    raise EOFError
            message = self.recv()
        except (EOFError, OSError):
            self._process.join(5)
            raise EngineStoppedError(
                f"Engine process {self.placement.index} exited while loading the model "
                f"(exit code {self._process.exitcode}).") from None
        if message[0] == "failed":
            self._process.join(5)
            raise ValueError(message[1])
        return message[1]

    def send(self, message: tuple) -> None:
        self._channel.send(message)

    def recv(self) -> tuple:
        """The next message; ``EOFError`` once the process is gone."""
        return self._channel.recv()

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the engine to stop, wait for it, and kill it if it does not."""
        self.request_stop()
        self.join(timeout)

    def request_stop(self) -> None:
        try:
            self.send(("stop",))
        except (OSError, ValueError):
            pass  # already gone

    def join(self, timeout: float) -> None:
        """Wait for the process to end, then kill it if it has not."""
        self._process.join(timeout)
        if self._process.is_alive():
            logger.warning("Engine process %d did not stop in %.0f s; killing it",
                           self.placement.index, timeout)
            self._process.kill()
            self._process.join(5)
        self._channel.conn.close()


def to_wire(outputs: list[torch.Tensor]) -> list[Any]:
    """Outputs as numpy arrays where they can be (pickled as raw bytes); other tensors
    (sparse, bfloat16) as themselves."""
    return [out.numpy() if out.layout is torch.strided and out.dtype != torch.bfloat16
            else out for out in outputs]


def from_wire(outputs: list[Any]) -> list[torch.Tensor]:
    return [torch.from_numpy(out) if isinstance(out, np.ndarray) else out for out in outputs]


def error_to_wire(exc: BaseException) -> tuple:
    return ("error", type(exc).__name__, str(exc), getattr(exc, "retry_after_s", None))


def error_from_wire(kind: str, message: str, retry_after_s: int | None) -> BaseException:
    if kind == "QueueFullError":
        return QueueFullError(message, retry_after_s or 1)
    if kind == "BatchFailedError":
        return BatchFailedError(message)
    return EngineStoppedError(message)


def _engine_main(config: ModelConfig, placement: Placement, max_queue_seconds: float | None,
                 conn: Any) -> None:
    """The engine process: load, warm up, say ready, then serve messages until told to
    stop or until the parent is gone."""
    # The parent decides when engines stop (after draining): Ctrl-C or a SIGTERM sent to
    # the whole process group must not end an engine under requests in flight. Without a
    # parent, the pipe closes and the loop below ends.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    channel = Channel(conn)

    def send(message: tuple) -> None:
        try:
            channel.send(message)
        except OSError:
            pass  # the parent is gone; the receive loop ends on its own

    if placement.threads:
        torch.set_num_threads(placement.threads)
    if placement.device is not None:
        config = dataclasses.replace(config, device=torch.device(placement.device))
    model_thread = ModelThread()
    try:
        engine = model_thread.submit(lambda: _load_and_warm_up(config)).result()
    except BaseException as exc:  # reported to the parent, which refuses to start
        send(("failed", f"{type(exc).__name__}: {exc}"))
        model_thread.close()
        return

    def on_batch(stats: BatchStats) -> None:
        stats.engine = placement.index
        send(("batch", stats))

    core = EngineCore(engine.runner, model_thread, config.max_num_batched_tokens,
                      on_batch=on_batch, max_queue_seconds=max_queue_seconds)
    core.start()
    send(("ready", engine.policy.output_width))
    requests: dict[int, CoreRequest] = {}

    def on_done(request_id: int, outcome: Outcome) -> None:  # on the model thread
        requests.pop(request_id, None)
        send(("done", request_id, error_to_wire(outcome) if isinstance(outcome, BaseException)
              else to_wire(outcome)))

    while True:
        try:
            message = channel.recv()
        except (EOFError, OSError):  # the parent is gone
            break
        if message[0] == "run":
            _, request_id, seqs, task = message
            request = CoreRequest(seqs, lambda outcome, rid=request_id: on_done(rid, outcome))
            requests[request_id] = request
            try:
                core.submit(request, task)
            except (EngineStoppedError, QueueFullError) as exc:
                requests.pop(request_id, None)
                send(("done", request_id, error_to_wire(exc)))
                if not core.is_running:  # its batch loop died: exit, so the parent restarts it
                    logging.getLogger(__name__).error(
                        "Engine %d's batch loop is gone; exiting to be restarted",
                        placement.index)
                    os._exit(1)
        elif message[0] == "withdraw":
            if (request := requests.pop(message[1], None)) is not None:
                core.withdraw(request)
        elif message[0] == "stop":
            break
    core.shutdown()


def _load_and_warm_up(config: ModelConfig) -> PoolingEngine:
    engine = PoolingEngine(config)
    seqs, task = warmup_records(engine)
    engine.runner.execute(seqs, task)
    return engine

