"""What this machine's CPU can do, read once."""

from __future__ import annotations

import functools
from pathlib import Path


@functools.cache
def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where unreadable)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = line.partition(":")
            fields.setdefault(name.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_flags() -> str:
    """The CPU feature flags (space-separated; empty where unreadable)."""
    return _cpuinfo().get("flags", "")


def cpu_has_native_bf16() -> bool:
    """True on CPUs with AMX or AVX512-BF16, where bf16 matmuls beat fp32."""
    flags = cpu_flags().split()
    return "amx_bf16" in flags or "avx512_bf16" in flags


def cpu_name() -> str:
    """The CPU's model name (for reports beside measured figures)."""
    return _cpuinfo().get("model name", "unknown CPU")
