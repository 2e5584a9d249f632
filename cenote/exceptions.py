"""Exceptions that callers may catch by name, as in vLLM."""

from __future__ import annotations

from typing import Any


class VLLMValidationError(ValueError):
    """A request (or offline call) that asks for something invalid, named as vLLM's:
    ``parameter`` is the field at fault where one is. A ``ValueError``, so code that
    catches those keeps working."""

    def __init__(self, message: str, *, parameter: str | None = None, value: Any = None) -> None:
        super().__init__(message)
        self.parameter = parameter
        self.value = value
