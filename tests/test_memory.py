"""The engine's heap trimming: at most once per interval, a real malloc_trim on glibc."""

from __future__ import annotations

import platform

import pytest

from cenote.engine import memory
from cenote.engine.memory import HeapTrimmer


def test_trims_at_most_once_per_interval(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(memory.time, "monotonic", lambda: clock[0])
    trimmer = HeapTrimmer(interval_s=5.0)
    calls = []
    trimmer._trim = lambda pad: calls.append(pad) or 1
    assert not trimmer.maybe_trim()
    clock[0] += 4.9
    assert not trimmer.maybe_trim()
    clock[0] += 0.2
    assert trimmer.maybe_trim() and calls == [0]
    assert not trimmer.maybe_trim()
    clock[0] += 5.0
    assert trimmer.maybe_trim() and calls == [0, 0]


def test_without_malloc_trim_it_does_nothing():
    trimmer = HeapTrimmer(interval_s=0.0)
    trimmer._trim = None
    assert not trimmer.available and not trimmer.maybe_trim()


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="malloc_trim is glibc's")
def test_glibc_malloc_trim_is_found_and_runs():
    trimmer = HeapTrimmer(interval_s=0.0)
    assert trimmer.available
    assert trimmer.maybe_trim()
