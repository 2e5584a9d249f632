"""The ``cenote`` command: ``cenote serve [MODEL] [options]``."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

import uvicorn

from cenote.arguments import build_parser
from cenote.compat.vllm import (
    expand_dotted_options,
    task_from_vllm_options,
    vllm_arg_problem,
)
from cenote.launch import LaunchError, load_models

logger = logging.getLogger("cenote")


def _read_template(value: str | None) -> str | None:
    """--chat-template: a file's contents, or the template given inline (as vLLM)."""
    if value is None:
        return None
    path = Path(value).expanduser()
    return path.read_text() if path.is_file() else value


def resolve_vllm_options(args: argparse.Namespace) -> str | None:
    """Fold vLLM's spellings into cenote's (``--model``, ``--convert``); returns an error
    message for a vLLM option that asks for what cenote cannot do, else None."""
    args.models = [args.model]
    if args.model_option is not None:
        if args.model is not None and args.model != args.model_option[0]:
            return f"MODEL given twice: {args.model!r} and --model {args.model_option[0]!r}."
        args.models = list(dict.fromkeys(args.model_option))
        args.model = args.models[0]
    if args.quantization not in (None, "none", "None", "int8"):
        return (f"--quantization {args.quantization}: cenote's one quantization is int8 "
                "(opt-in int8 matmuls on CPUs).")
    try:
        args.task = task_from_vllm_options(args.task, args.runner, args.convert)
    except ValueError as exc:
        return f"--runner/--convert: {exc}"
    given = {key[len("ignored_"):]: value for key, value in vars(args).items()
             if key.startswith("ignored_") and value not in (None, False)}
    for name, value in given.items():
        if problem := vllm_arg_problem(name, value, f"--{name.replace('_', '-')} {value}"):
            return problem
    ignored = sorted(f"--{name.replace('_', '-')}" for name in given)
    if ignored:
        logger.info("Ignoring vLLM options that do not apply here: %s", ", ".join(ignored))
    return None


def _limits_problem(args: argparse.Namespace) -> str | None:
    """Limits that contradict each other, found before the model loads."""
    if args.max_mm_pixels_in_flight < args.max_mm_pixels_per_request:
        return (f"--max-mm-pixels-in-flight ({args.max_mm_pixels_in_flight}) must be at least "
                f"--max-mm-pixels-per-request ({args.max_mm_pixels_per_request}).")
    return None


def serve(args: argparse.Namespace) -> int:
    """Load the model, then serve it until interrupted (or, for run-batch, run the input
    file through the same app)."""
    import torch

    from cenote.server.app import begin_draining, build_app
    from cenote.server.context import ServerLimits
    from cenote.server.media import MediaPolicy

    problem = resolve_vllm_options(args) or _limits_problem(args)
    if problem:
        logger.error("%s", problem)
        return 2
    if args.command == "run-batch":  # a bad path is told now, not after the model loads
        from cenote.batch import check_batch_files

        if problem := check_batch_files(args):
            logger.error("%s", problem)
            return 2
    tracing = None
    if args.otlp_traces_endpoint:  # the packages are checked before the model loads
        from cenote.server.tracing import Tracing

        try:
            tracing = Tracing(args.otlp_traces_endpoint)
        except ValueError as exc:
            logger.error("%s", exc)
            return 2
    if args.threads is not None:
        # Global: the model thread picks it up at its first operation.
        torch.set_num_threads(args.threads)
    try:
        models = load_models(args)
    except LaunchError as exc:
        logger.error("%s", exc)
        return 2
    except (ValueError, OSError) as exc:  # no such model, weights that do not load, ...
        logger.error("Cannot load the model: %s", exc)
        return 1
    limits = ServerLimits(max_request_body_bytes=args.max_request_body_bytes,
                          max_inputs_per_request=args.max_inputs_per_request,
                          request_timeout_s=args.request_timeout,
                          engine_stall_timeout_s=args.engine_stall_timeout,
                          request_body_timeout_s=args.request_body_timeout,
                          max_mm_pixels_per_request=args.max_mm_pixels_per_request,
                          max_mm_pixels_in_flight=args.max_mm_pixels_in_flight)
    app = build_app(models, api_key=args.api_key, limits=limits,
                    media=MediaPolicy.from_flags(args),
                    allowed_origins=args.allowed_origins, log_inputs=args.log_inputs,
                    chat_template=_read_template(args.chat_template),
                    trust_request_chat_template=args.trust_request_chat_template,
                    tracing=tracing)
    if args.command == "run-batch":  # the same app, driven by a file instead of HTTP
        from cenote.batch import run_batch

        return run_batch(app, args)
    # The start-up heap (torch, transformers, the model: ~200k objects) lives as long as
    # the process; out of the cyclic GC's sight, a full collection costs microseconds
    # instead of ~100 ms landing on whichever request triggered it.
    gc.collect()
    gc.freeze()
    # In-flight requests end within --request-timeout; the margin is for their answers.
    server = _Server(uvicorn.Config(app, host=args.host, port=args.port,
                                    log_level=args.log_level, access_log=args.access_log,
                                    timeout_graceful_shutdown=int(args.request_timeout) + 5),
                     ", ".join(model.names[0] for model in models),
                     on_exit=lambda: begin_draining(app))
    # uvicorn re-raises SIGTERM to the handler found at start once it has shut down
    # gracefully; a handler that ignores it makes a drained shutdown exit 0, not -15.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


class _Server(uvicorn.Server):
    """uvicorn's server, plus one log line with the URL once it accepts connections,
    and ``on_exit`` called as soon as a shutdown signal arrives (to start draining)."""

    def __init__(self, config: uvicorn.Config, model_name: str,
                 on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self.model_name = model_name
        self.on_exit = on_exit

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.on_exit()
        super().handle_exit(sig, frame)

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.started:
            host = "localhost" if self.config.host in ("0.0.0.0", "::") else self.config.host
            url = f"http://{host}:{self.config.port}"
            logger.info("cenote is serving %s at %s (OpenAI base URL %s/v1)",
                        self.model_name, url, url)

    async def shutdown(self, sockets=None) -> None:
        # Keep listening while the requests in flight finish (within the graceful
        # timeout): a new request gets the guard's 503 and a liveness probe (/ping) 200,
        # not a refused connection. Then uvicorn closes the socket and the connections.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.timeout_graceful_shutdown
        while self.server_state.tasks and not self.force_exit and loop.time() < deadline:
            await asyncio.sleep(0.1)
        await super().shutdown(sockets)


def dashed_options(argv: Sequence[str]) -> list[str]:
    """``--hf_overrides`` read as ``--hf-overrides``: vLLM takes either spelling of
    every option, and its docs use both. A dotted option's field names stay as they
    are (``--pooler-config.seq_pooling_type``)."""
    out, options_done = [], False
    for arg in argv:
        if arg == "--":
            options_done = True
        elif not options_done and arg.startswith("--"):
            name, eq, value = arg.partition("=")
            option, dot, fields = name.partition(".")
            arg = option.replace("_", "-") + dot + fields + eq + value
        out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cenote`` console script."""
    argv = dashed_options(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(expand_dotted_options(argv))
    logging.basicConfig(level=getattr(args, "log_level", "info").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command in ("serve", "run-batch"):
        return serve(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
