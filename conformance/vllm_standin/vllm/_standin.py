"""How the stand-in ``vllm`` answers for the parts of vLLM cenote does not map.

vLLM's tests import much more than the public API: engine internals, serving classes,
test helpers' plumbing. The stand-in maps the public API to cenote (the modules beside
this one) and lets every other ``vllm.*`` import succeed with a placeholder, so a test
file is collected and each test fails only when it *uses* something unmapped:

- ``VllmInternalError``: the test touches a vLLM internal (the report files it under
  "unit-tests vLLM internals");
- ``MissingInCenote``: the test uses a public vLLM name cenote offers no counterpart of
  (listed in ``PUBLIC_NAMES``; the report files it as a gap);
- ``NeedsNetwork``: the test fetches vLLM's media from the network.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types
from typing import Any

# Public vLLM names with no cenote counterpart yet: using one is a gap, not an internal.
PUBLIC_NAMES: frozenset[str] = frozenset()


class VllmInternalError(NotImplementedError):
    """A test used a vLLM internal that has no cenote counterpart."""


class MissingInCenote(NotImplementedError):
    """A test used a public vLLM name that cenote does not offer (a gap)."""


class NeedsNetwork(NotImplementedError):
    """A test needs vLLM's test media or data sets from the network."""


def _refuse(qualname: str) -> NotImplementedError:
    # A public class's attributes (TokenEmbeddingResponse.model_validate) are public too.
    parts = qualname.split(".")
    if any(".".join(parts[:n]) in PUBLIC_NAMES for n in range(1, len(parts) + 1)):
        return MissingInCenote(f"cenote has no counterpart of vLLM's {qualname}")
    return VllmInternalError(f"vLLM internal {qualname} (no cenote counterpart)")


class _PlaceholderMeta(type):
    """Placeholders are classes (so a test may subclass one, or use it in a type hint);
    creating one, calling it or reading its attributes refuses with the name."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        raise _refuse(cls._vllm_name)

    def __getattr__(cls, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return placeholder(f"{cls._vllm_name}.{name}")

    def __getitem__(cls, item: Any) -> Any:
        return cls

    def __or__(cls, other: Any) -> Any:
        return Any

    __ror__ = __or__


def placeholder(qualname: str) -> type:
    module, _, name = qualname.rpartition(".")
    return _PlaceholderMeta(name, (), {"_vllm_name": qualname, "__module__": module})


def module_getattr(module_name: str):
    """A module ``__getattr__`` answering unmapped names with placeholders."""

    def __getattr__(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return placeholder(f"{module_name}.{name}")

    return __getattr__


class _LenientLoader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = types.ModuleType(spec.name)
        module.__path__ = []  # a package, so its submodules import too
        module.__getattr__ = module_getattr(spec.name)  # type: ignore[attr-defined]
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        return None


class _LenientFinder(importlib.abc.MetaPathFinder):
    """Last on ``sys.meta_path``: any ``vllm.*`` module no stand-in file provides."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None):
        if not fullname.startswith("vllm."):
            return None
        return importlib.machinery.ModuleSpec(fullname, _LenientLoader(), is_package=True)


def install() -> None:
    if not any(isinstance(f, _LenientFinder) for f in sys.meta_path):
        sys.meta_path.append(_LenientFinder())
