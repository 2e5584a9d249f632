"""The part of ``vllm serve``'s command line vLLM's ``RemoteOpenAIServer`` reads in the
test process (where to connect); the server is ``cenote serve`` (the stand-in ``vllm``
command), which parses the whole command line itself."""

import argparse
from typing import Any

from vllm import _standin

__getattr__ = _standin.module_getattr(__name__)


class ServeSubcommand:
    name = "serve"

    def subparser_init(self, subparsers: Any) -> argparse.ArgumentParser:
        parser = subparsers.add_parser("serve")
        parser.add_argument("--model")
        parser.add_argument("--host")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--uds")
        parser.add_argument("--shutdown-timeout", type=float, default=0.0)
        parser.add_argument("--show-hidden-metrics-for-version")
        return parser
