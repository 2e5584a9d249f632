import argparse

from vllm import _standin

__getattr__ = _standin.module_getattr(__name__)


class FlexibleArgumentParser(argparse.ArgumentParser):
    """Reads only the options vLLM's test helper needs (host, port, ...); the server
    itself (``cenote serve``) parses and judges the full command line."""

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        known, _ = self.parse_known_args(args, namespace)
        return known
