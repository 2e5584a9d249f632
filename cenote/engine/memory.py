"""Giving freed heap memory back to the operating system in a long-running server.

glibc's malloc keeps memory that tensors freed for later reuse, and after the
first big batch it serves even multi-megabyte activations from its heap
(its mmap threshold rises to the largest chunk freed). With batches of
ever-changing shapes the heap then fragments and a server's RSS creeps up by
tens of MiB per thousand requests, though nothing leaks. ``malloc_trim``
hands the free pages back; the engine calls it every few seconds between
batches, which costs a few milliseconds. Elsewhere (musl, macOS) it is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time

TRIM_INTERVAL_S = 5.0


def _malloc_trim():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


class HeapTrimmer:
    """``maybe_trim()`` after each batch: at most one ``malloc_trim`` per interval."""

    def __init__(self, interval_s: float = TRIM_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._trim = _malloc_trim()
        self._last = time.monotonic()

    @property
    def available(self) -> bool:
        return self._trim is not None

    def maybe_trim(self) -> bool:
        """Trim if the interval has passed; True when it did."""
        now = time.monotonic()
        if self._trim is None or now - self._last < self.interval_s:
            return False
        self._trim(0)
        self._last = time.monotonic()
        return True
