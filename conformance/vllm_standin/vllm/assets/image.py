from dataclasses import dataclass
from typing import Any

from vllm import _standin


@dataclass(frozen=True)
class ImageAsset:
    """vLLM's downloadable test image (created at import by vLLM's conftest; any use
    needs the download)."""

    name: str

    def __getattr__(self, attr: str) -> Any:
        raise _standin.NeedsNetwork(f"vLLM's test asset {self.name!r}")
