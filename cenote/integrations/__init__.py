"""cenote inside other systems: Ray Data and Ray Serve (``pip install 'cenote[ray]'``).

Nothing here is imported by ``import cenote``, and importing this package does not
import Ray: ``cenote.integrations.ray`` and ``cenote.integrations.ray_serve`` do.
"""

from __future__ import annotations

import importlib
from types import ModuleType

RAY_MISSING = "Ray is not installed; install cenote's Ray extra: pip install 'cenote[ray]'"


def import_ray(*submodules: str) -> ModuleType:
    """``ray`` with ``submodules`` (``"data"``, ``"serve"``) imported, or an ImportError
    that says how to install it."""
    try:
        ray = importlib.import_module("ray")
        for name in submodules:
            importlib.import_module(f"ray.{name}")
    except ImportError as exc:
        raise ImportError(RAY_MISSING) from exc
    return ray


def use_assigned_cpus() -> int | None:
    """In a Ray actor, give torch as many threads as the CPUs Ray assigned it
    (``num_cpus``; at least one), so actors sharing a node do not fight for cores.
    Returns the thread count, or None outside Ray (torch's setting is then kept)."""
    import ray
    import torch

    if not ray.is_initialized():
        return None
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    if not cpus:
        return None
    threads = max(1, int(cpus))
    torch.set_num_threads(threads)
    return threads
