"""The ``cenote`` command line's options: ``serve`` (with the model, server and limit
options) and ``run-batch`` (the same, plus its files), and vLLM's spellings of them."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from cenote.compat.vllm import DTYPE_ALIASES, IGNORED_VLLM_OPTIONS
from cenote.launch import (
    CPU_SERVER_MAX_NUM_BATCHED_TOKENS,
    QUEUE_SHARE_OF_TIMEOUT,
    QUEUED_BATCHES,
)
from cenote.tasks import MODEL_TASKS


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
    serve.add_argument("--auto-truncate", action="store_true",
                       help="Cut inputs longer than --max-model-len to it, keeping their "
                            "start (text-embeddings-inference's option), unless a request "
                            "sets truncate_prompt_tokens or truncation_side. Default: off, "
                            "long inputs are refused (as vLLM).")
    serve.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction,
                       default=True,
                       help="Causal decoders (Qwen3-Embedding and the like) compute a "
                            "prefix that several inputs of a batch share, such as an "
                            "instruction, once (vLLM's prefix caching, within a batch); the "
                            "vectors are those of each input run whole. "
                            "--no-enable-prefix-caching runs every input whole.")
    serve.add_argument("--max-num-batched-tokens", type=_positive_int, default=None,
                       help="Token budget of one batch (padded size: sequences x longest). "
                            "Smaller batches answer concurrent clients sooner; larger ones "
                            "can raise throughput. Default: "
                            f"{CPU_SERVER_MAX_NUM_BATCHED_TOKENS} on CPU (or max-model-len if "
                            "larger), the engine's default on GPU.")
    serve.add_argument("--override-pooler-config", "--pooler-config", type=_json_object,
                       default=None, metavar="JSON",
                       help="Override the default pooler, e.g. "
                            "'{\"seq_pooling_type\": \"MEAN\", \"normalize\": false}', or one "
                            "field per option as vLLM: --pooler-config.task token_embed.")
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
    serve.add_argument("--max-mm-pixels-per-request", type=_positive_int, default=64_000_000,
                       metavar="N",
                       help="Image pixels one request may carry in all (counted from each "
                            "image's header before decoding; a tiny image counts as the "
                            "model's input size); 400 above.")
    serve.add_argument("--max-mm-pixels-in-flight", type=_positive_int, default=128_000_000,
                       metavar="N",
                       help="Image pixels all requests being answered may hold at once; "
                            "past it, image requests wait for others to finish, then 429. "
                            "At least --max-mm-pixels-per-request.")
    serve.add_argument("--limit-mm-per-prompt", type=_json_object, default=None, metavar="JSON",
                       help="Images and videos per prompt, e.g. '{\"image\": 4, \"video\": 1}'. "
                            "Default: 1 image for a dual encoder; 16 images, 2 videos for a "
                            "vision-language model.")
    serve.add_argument("--max-video-frames", type=_positive_int, default=1024, metavar="N",
                       help="Videos with more frames are refused (read from the container's "
                            "header before decoding).")
    serve.add_argument("--max-video-seconds", type=float, default=600.0, metavar="S",
                       help="Videos longer than this are refused (from the header).")
    adapters = serve.add_argument_group("LoRA adapters (docs/adapters.md)")
    adapters.add_argument("--enable-lora", action="store_true",
                          help="Serve LoRA adapters on the (first) model: a request's 'model' "
                               "names the adapter.")
    adapters.add_argument("--max-lora-rank", type=_positive_int, default=16, metavar="R",
                          help="The highest adapter rank accepted (default 16).")
    adapters.add_argument("--max-loras", type=_positive_int, default=1, metavar="K",
                          help="Adapters loaded at once (default 1); one more is refused "
                               "with 400 until one is unloaded.")
    adapters.add_argument("--lora-modules", nargs="+", action="extend", default=None,
                          metavar="NAME=PATH",
                          help="Adapters to load at start: name=path (a PEFT folder) or "
                               "vLLM's JSON form '{\"name\": ..., \"path\": ..., "
                               "\"base_model_name\": ...}'.")
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
    limits.add_argument("--request-body-timeout", type=_positive_float, default=30.0,
                        metavar="SECONDS",
                        help="A request body that has not fully arrived within this time gets "
                             "408 and its connection is closed (slow or stalled clients).")
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
    serve.add_argument("--io-processor-plugin", default=None, metavar="NAME",
                       help="An IO processor plugin (an entry point of cenote."
                            "io_processor_plugins or vllm.io_processor_plugins, or "
                            "module:Class) that answers /pooling requests with task "
                            "'plugin' and their data, e.g. bge_m3_sparse_plugin.")
    serve.add_argument("--otlp-traces-endpoint", default=None, metavar="URL",
                       help="Send OpenTelemetry traces of each request (its preprocessing, "
                            "queue, engine and postprocessing spans) to this OTLP endpoint "
                            "(gRPC, or HTTP with OTEL_EXPORTER_OTLP_TRACES_PROTOCOL="
                            "http/protobuf). Needs pip install 'cenote[tracing]'.")
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
