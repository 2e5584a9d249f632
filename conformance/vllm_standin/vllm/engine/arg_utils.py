"""What vLLM's test helper does before starting a server: resolve and download the
model. The stand-in checkpoints are already in the offline hub cache."""

from types import SimpleNamespace
from typing import Any

from vllm import _standin

__getattr__ = _standin.module_getattr(__name__)


class AsyncEngineArgs:
    def __init__(self, args: Any) -> None:
        self.args = args

    @classmethod
    def from_cli_args(cls, args: Any) -> "AsyncEngineArgs":
        return cls(args)

    def create_model_config(self) -> Any:
        model = self.args.model
        return SimpleNamespace(model=model, tokenizer=model, tokenizer_mode="auto",
                               trust_remote_code=False, tokenizer_revision=None)

    def create_load_config(self) -> Any:
        return SimpleNamespace()


EngineArgs = AsyncEngineArgs
