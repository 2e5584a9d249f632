"""The ``cenote`` command: ``cenote serve [MODEL] [options]``."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

from cenote.compat.vllm import (
    DTYPE_ALIASES,
    IGNORED_VLLM_OPTIONS,
    task_from_vllm_options,
    vllm_arg_problem,
)
from cenote.launch import (
    CPU_SERVER_MAX_NUM_BATCHED_TOKENS,
    QUEUE_SHARE_OF_TIMEOUT,
    QUEUED_BATCHES,
    LaunchError,
    load_models,
)
from cenote.tasks import MODEL_TASKS

logger = logging.getLogger("cenote")


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object, e.g. '{\"key\": 1}'")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from exc
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not positive")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from exc
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of seconds")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cenote",
        description="A fast engine and OpenAI-compatible server for pooling models.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # The model and server options, shared by serve and run-batch.
    serve = argparse.ArgumentParser(add_help=False)
    serve.add_argument(
        "model", nargs="?", default=None, metavar="MODEL",
        help="A local model folder or a Hugging Face hub id (taken from the local hub cache, "
             "downloaded when online). Without it, the bundled all-MiniLM-L6-v2 is served.")
    serve.add_argument("--task", default="auto", choices=MODEL_TASKS,
                       help="What the model does; 'auto' decides from its files. Use embed, "
                            "classify or reward to convert a *ForCausalLM checkpoint.")
    serve.add_argument("--host", default="0.0.0.0", help="Address to listen on.")
    serve.add_argument("--port", type=int, default=8000, help="Port to listen on.")
    serve.add_argument("--served-model-name", nargs="+", action="append", default=None,
                       metavar="NAME",
                       help="Name(s) clients may pass as `model`; a response names the "
                            "model its request asked for (the first name when it gave none), "
                            "and error messages use the first. Default: MODEL as given. "
                            "With several --model, give it once per model, in order.")
    serve.add_argument("--data-parallel-size", "-dp", type=_positive_int, default=1,
                       metavar="N",
                       help="Run N engine processes behind this one front end (which "
                            "tokenises and routes each request to the least-loaded engine). "
                            "On a CPU the threads and cores are split between them; on CUDA "
                            "one per visible GPU, round robin. An engine that dies is "
                            "restarted; only its requests fail (503 with Retry-After).")
    serve.add_argument("--dtype", default="auto",
                       choices=["auto", "float32", "bfloat16", "float16", *DTYPE_ALIASES],
                       help="Weight and activation precision (vLLM's half, float: float16, "
                            "float32). auto: bfloat16 on CPUs with native bf16, else "
                            "float32; the checkpoint's half type on CUDA.")
    serve.add_argument("--quantization", "-q", default=None, metavar="int8",
                       help="int8: opt-in int8 matmuls on CPUs (natively run models), their "
                            "cosine to the float model's outputs logged at start. Default: "
                            "none (the dtype throughout).")
    serve.add_argument("--device", default="auto",
                       help="auto, cpu, or cuda[:N].")
    serve.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                       help="CPU threads for the model's matrix work. Default: one per "
                            "core. Fewer leave cores to the HTTP and tokenising threads or "
                            "to other replicas on the same machine.")
    serve.add_argument("--max-model-len", type=_positive_int, default=None,
                       help="Longest input in tokens; longer inputs are refused with 400. "
                            "Default: what the model supports.")
    serve.add_argument("--max-num-batched-tokens", type=_positive_int, default=None,
                       help="Token budget of one batch (padded size: sequences x longest). "
                            "Smaller batches answer concurrent clients sooner; larger ones "
                            "can raise throughput. Default: "
                            f"{CPU_SERVER_MAX_NUM_BATCHED_TOKENS} on CPU (or max-model-len if "
                            "larger), the engine's default on GPU.")
    serve.add_argument("--override-pooler-config", "--pooler-config", type=_json_object,
                       default=None, metavar="JSON",
                       help="Override the default pooler, e.g. "
                            "'{\"pooling_type\": \"MEAN\", \"normalize\": false}'.")
    serve.add_argument("--hf-overrides", type=_json_object, default=None, metavar="JSON",
                       help="Merged into the Hugging Face config, e.g. "
                            "'{\"matryoshka_dimensions\": [256]}'.")
    serve.add_argument("--trust-remote-code", action="store_true",
                       help="Allow model folders that ship their own Python code.")
    serve.add_argument("--chat-template", default=None, metavar="FILE_OR_TEMPLATE",
                       help="The Jinja chat template for requests with messages (a file, or "
                            "the template itself). Default: the tokenizer's.")
    serve.add_argument("--trust-request-chat-template", action="store_true",
                       help="Render a chat_template sent in a request (requests with "
                            "messages otherwise use the model's own template).")
    serve.add_argument("--allowed-local-media-path", default=None, metavar="DIR",
                       help="A folder whose images requests may name as file:// URLs. "
                            "Default: none (file:// refused).")
    serve.add_argument("--allowed-media-domains", nargs="+", default=[], metavar="HOST",
                       help="Hosts whose http(s):// image URLs requests may name. Default: "
                            "none (remote images refused).")
    serve.add_argument("--max-image-pixels", type=_positive_int, default=40_000_000,
                       metavar="N",
                       help="Images with more pixels are refused (checked before decoding).")
    serve.add_argument("--limit-mm-per-prompt", type=_json_object, default=None, metavar="JSON",
                       help="Images per prompt, e.g. '{\"image\": 1}' (the default).")
    serve.add_argument("--revision", default=None,
                       help="Hub revision (branch, tag or commit) of MODEL.")
    serve.add_argument("--tokenizer", default=None,
                       help="A folder or hub id to read the tokenizer from. Default: MODEL's.")
    serve.add_argument("--api-key",
                       default=os.environ.get("CENOTE_API_KEY") or os.environ.get("VLLM_API_KEY"),
                       help="Require 'Authorization: Bearer KEY' on every route but /health. "
                            "Default: the CENOTE_API_KEY environment variable, else "
                            "VLLM_API_KEY, else no key.")
    limits = serve.add_argument_group(
        "limits and operations",
        "What the server refuses, and when it gives up. Every refusal is a JSON error.")
    limits.add_argument("--max-request-body-bytes", type=_positive_int, default=32 * 1024 * 1024,
                        metavar="BYTES",
                        help="Largest request body; larger ones get 413 before they are "
                             "parsed (declared or counted while a chunked body streams in).")
    limits.add_argument("--max-inputs-per-request", type=_positive_int, default=2048,
                        metavar="N",
                        help="Most inputs in one request (texts, token-id prompts, score "
                             "pairs, rerank documents); more get 400. 2048 is OpenAI's limit.")
    limits.add_argument("--max-queued-tokens", type=_positive_int, default=None, metavar="N",
                        help="Admission control: while more than N tokens wait in the queue, "
                             "new requests get 429 with Retry-After. Default: "
                             f"{QUEUED_BATCHES} x --max-num-batched-tokens (on CPU without "
                             "that flag: x the engine's own default, not the server's smaller "
                             "one).")
    limits.add_argument("--request-timeout", type=_positive_float, default=120.0,
                        metavar="SECONDS",
                        help="A request not answered within this time gets 504, and its "
                             "inputs that have not run yet are dropped from the queue. A "
                             "request bigger than one batch gets 429 while the work queued "
                             "ahead of it would take more than "
                             f"{QUEUE_SHARE_OF_TIMEOUT:g} x this at the recent throughput.")
    limits.add_argument("--engine-stall-timeout", type=_positive_float, default=120.0,
                        metavar="SECONDS",
                        help="/health answers 503 when the engine is busy but has not started "
                             "or finished a batch for this long (a hung model). Raise it for "
                             "very large models on CPU, whose one batch can take minutes.")
    limits.add_argument("--allowed-origins", nargs="+", default=None, metavar="ORIGIN",
                        help="Send CORS headers for these browser origins ('*' for any). "
                             "Default: no CORS headers, so browsers refuse cross-origin calls.")
    limits.add_argument("--log-inputs", action="store_true",
                        help="Log each request's body (its first 4096 characters). Off by "
                             "default: logs never hold input text.")
    serve.add_argument("--log-level", default="info",
                       choices=["critical", "error", "warning", "info", "debug"],
                       help="Logging verbosity.")
    serve.add_argument("--access-log", action="store_true",
                       help="Log one line per HTTP request (method, path, status).")
    _add_vllm_options(serve)
    commands.add_parser(
        "serve", parents=[serve],
        help="Serve a pooling model over an OpenAI-compatible HTTP API.",
        description="Serve a pooling model (embeddings, classification, cross-encoder "
                    "scoring, reward) over an OpenAI-compatible HTTP API.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    batch = commands.add_parser(
        "run-batch", parents=[serve],
        help="Run a file of requests in OpenAI's batch format (as vllm run-batch).",
        description="Run each line of an OpenAI batch file (custom_id, method, url, body) "
                    "through the same routes as the server, writing one output line per "
                    "input line, in input order.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    batch.add_argument("-i", "--input-file", required=True, metavar="IN.jsonl",
                       help="The requests, one JSON object per line; - reads stdin.")
    batch.add_argument("-o", "--output-file", required=True, metavar="OUT.jsonl",
                       help="Where the results go, one per line; - writes stdout. "
                            "Refused when it is the input file.")
    batch.add_argument("--resume", action="store_true",
                       help="Skip the lines OUT.jsonl already answers (a custom_id it holds "
                            "k times skips its first k lines) and append the rest.")
    batch.add_argument("--max-concurrent-lines", type=_positive_int, default=256,
                       metavar="N", help="Lines in flight at once (they share batches).")
    return parser


def _add_vllm_options(serve: argparse.ArgumentParser) -> None:
    group = serve.add_argument_group(
        "vLLM compatibility",
        "vLLM's names for choices made above, and vLLM options that do not apply here "
        "(accepted and ignored, so a vLLM command line runs unchanged: "
        f"{', '.join(name for name, _ in IGNORED_VLLM_OPTIONS)}).")
    group.add_argument("--model", dest="model_option", action="append", default=None,
                       metavar="MODEL",
                       help="MODEL given as an option, as older vLLM versions take it. "
                            "Repeat it to serve several models, each with its own engine; "
                            "requests pick one by `model`.")
    group.add_argument("--runner", default="auto", choices=["auto", "pooling", "generate"],
                       help="vLLM's runner; cenote runs pooling models only.")
    group.add_argument("--convert", default="auto",
                       choices=["auto", "none", "embed", "classify", "reward"],
                       help="vLLM's newer name for --task: convert a checkpoint into an "
                            "embedding, classification or reward model.")
    for name, takes_value in IGNORED_VLLM_OPTIONS:
        kwargs = {"metavar": "VALUE"} if takes_value else {"action": "store_true"}
        names = [name, "-tp"] if name == "--tensor-parallel-size" else [name]
        group.add_argument(*names, dest="ignored_" + name[2:].replace("-", "_"),
                           help=argparse.SUPPRESS, **kwargs)


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


def serve(args: argparse.Namespace) -> int:
    """Load the model, then serve it until interrupted (or, for run-batch, run the input
    file through the same app)."""
    import torch

    from cenote.server.app import begin_draining, build_app
    from cenote.server.context import ServerLimits
    from cenote.server.media import MediaPolicy

    problem = resolve_vllm_options(args)
    if problem:
        logger.error("%s", problem)
        return 2
    if args.command == "run-batch":  # a bad path is told now, not after the model loads
        from cenote.batch import check_batch_files

        if problem := check_batch_files(args):
            logger.error("%s", problem)
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
                          engine_stall_timeout_s=args.engine_stall_timeout)
    app = build_app(models, api_key=args.api_key, limits=limits,
                    media=MediaPolicy.from_flags(args),
                    allowed_origins=args.allowed_origins, log_inputs=args.log_inputs,
                    chat_template=_read_template(args.chat_template),
                    trust_request_chat_template=args.trust_request_chat_template)
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


def dashed_options(argv: Sequence[str]) -> list[str]:
    """``--hf_overrides`` read as ``--hf-overrides``: vLLM takes either spelling of
    every option, and its docs use both."""
    out, options_done = [], False
    for arg in argv:
        if arg == "--":
            options_done = True
        elif not options_done and arg.startswith("--"):
            name, eq, value = arg.partition("=")
            arg = name.replace("_", "-") + eq + value
        out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cenote`` console script."""
    args = build_parser().parse_args(dashed_options(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=getattr(args, "log_level", "info").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command in ("serve", "run-batch"):
        return serve(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
