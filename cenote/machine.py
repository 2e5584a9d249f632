"""What this machine's CPU can do, read once."""

from __future__ import annotations

import functools
from pathlib import Path


@functools.cache
def cpu_flags() -> str:
    """The CPU feature flags of /proc/cpuinfo (space-separated; empty where unreadable)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return ""


def cpu_has_native_bf16() -> bool:
    """True on CPUs with AMX or AVX512-BF16, where bf16 matmuls beat fp32."""
    flags = cpu_flags().split()
    return "amx_bf16" in flags or "avx512_bf16" in flags


@functools.cache
def cpu_name() -> str:
    """The CPU's model name (for reports beside measured figures)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return "unknown CPU"
