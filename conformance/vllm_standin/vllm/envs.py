"""vLLM's environment switches: read from the environment, unset ones are None."""

import os
from typing import Any


def maybe_convert_bool(value: str | None) -> bool | None:
    return None if value is None else bool(int(value))


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    return os.environ.get(name)
