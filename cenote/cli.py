"""The ``cenote`` command: ``cenote serve [MODEL] [options]``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import uvicorn

from cenote.config import TASKS

logger = logging.getLogger("cenote")

DEFAULT_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cenote",
        description="A fast engine and OpenAI-compatible server for pooling models.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve", help="Serve a pooling model over an OpenAI-compatible HTTP API.",
        description="Serve a pooling model (embeddings, classification, cross-encoder "
                    "scoring, reward) over an OpenAI-compatible HTTP API.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    serve.add_argument(
        "model", nargs="?", default=None, metavar="MODEL",
        help="A local model folder or a Hugging Face hub id (taken from the local hub cache, "
             "downloaded when online). Without it, the bundled all-MiniLM-L6-v2 is served.")
    serve.add_argument("--task", default="auto", choices=TASKS,
                       help="What the model does; 'auto' decides from its files. Use embed, "
                            "classify or reward to convert a *ForCausalLM checkpoint.")
    serve.add_argument("--host", default="0.0.0.0", help="Address to listen on.")
    serve.add_argument("--port", type=int, default=8000, help="Port to listen on.")
    serve.add_argument("--served-model-name", nargs="+", default=None, metavar="NAME",
                       help="Name(s) clients pass as `model`; the first is reported in "
                            "responses. Default: MODEL as given.")
    serve.add_argument("--dtype", default="auto",
                       choices=["auto", "float32", "bfloat16", "float16"],
                       help="Weight and activation precision. auto: bfloat16 on CPUs with "
                            "native bf16, else float32; the checkpoint's half type on CUDA.")
    serve.add_argument("--device", default="auto",
                       help="auto, cpu, or cuda[:N].")
    serve.add_argument("--max-model-len", type=_positive_int, default=None,
                       help="Longest input in tokens; longer inputs are refused with 400. "
                            "Default: what the model supports.")
    serve.add_argument("--max-num-batched-tokens", type=_positive_int, default=None,
                       help="Token budget of one batch (padded size: sequences x longest). "
                            "Smaller batches answer concurrent clients sooner; larger ones "
                            "can raise throughput. Default: the engine's default.")
    serve.add_argument("--override-pooler-config", type=_json_object, default=None,
                       metavar="JSON",
                       help="Override the default pooler, e.g. "
                            "'{\"pooling_type\": \"MEAN\", \"normalize\": false}'.")
    serve.add_argument("--hf-overrides", type=_json_object, default=None, metavar="JSON",
                       help="Merged into the Hugging Face config, e.g. "
                            "'{\"matryoshka_dimensions\": [256]}'.")
    serve.add_argument("--trust-remote-code", action="store_true",
                       help="Allow model folders that ship their own Python code.")
    serve.add_argument("--revision", default=None,
                       help="Hub revision (branch, tag or commit) of MODEL.")
    serve.add_argument("--api-key", default=os.environ.get("CENOTE_API_KEY"),
                       help="Require 'Authorization: Bearer KEY' on every route but /health. "
                            "Default: the CENOTE_API_KEY environment variable, else no key.")
    serve.add_argument("--log-level", default="info",
                       choices=["critical", "error", "warning", "info", "debug"],
                       help="Logging verbosity.")
    serve.add_argument("--access-log", action="store_true",
                       help="Log one line per HTTP request (method, path, status).")
    return parser


def serve(args: argparse.Namespace) -> int:
    """Load the model, then serve it until interrupted."""
    from cenote.config import ModelConfig
    from cenote.engine.async_engine import AsyncPoolingEngine
    from cenote.server.app import build_app

    try:
        config = ModelConfig.from_args(
            model=args.model, task=args.task, dtype=args.dtype,
            max_model_len=args.max_model_len, device=args.device,
            override_pooler_config=args.override_pooler_config,
            hf_overrides=args.hf_overrides,
            max_num_batched_tokens=args.max_num_batched_tokens,
            trust_remote_code=args.trust_remote_code, revision=args.revision)
    except (ValueError, OSError) as exc:
        logger.error("Cannot load the model: %s", exc)
        return 1
    names = args.served_model_name or [args.model or DEFAULT_MODEL_NAME]
    logger.info("Loading %s (task %s, %s on %s)", config.model, config.task,
                str(config.dtype).removeprefix("torch."), config.device)
    engine = AsyncPoolingEngine.from_config(config)
    app = build_app(engine, served_model_names=names, api_key=args.api_key)
    server = _Server(uvicorn.Config(app, host=args.host, port=args.port,
                                    log_level=args.log_level, access_log=args.access_log),
                     names[0])
    server.run()
    return 0


class _Server(uvicorn.Server):
    """uvicorn's server, plus one log line with the URL once it accepts connections."""

    def __init__(self, config: uvicorn.Config, model_name: str) -> None:
        super().__init__(config)
        self.model_name = model_name

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.started:
            host = "localhost" if self.config.host in ("0.0.0.0", "::") else self.config.host
            url = f"http://{host}:{self.config.port}"
            logger.info("cenote is serving %s at %s (OpenAI base URL %s/v1)",
                        self.model_name, url, url)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cenote`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(args, "log_level", "info").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "serve":
        return serve(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
