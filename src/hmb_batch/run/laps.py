"""Each stage's wall time and peak resident memory, for the manifest and the progress display."""

from __future__ import annotations

import os
import resource
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

_MiB = 1 << 20


class Laps:
    """Wall-clock seconds and peak resident memory per stage, for the manifest (and a progress
    display): which stage to look at when a run is slow or near its memory limit.

    A stage's peak: where the process's high-water mark (Linux VmHWM) rose during the stage,
    that mark — exact; otherwise the largest resident size a sampling thread saw (every 50 ms).
    The high-water mark itself is never reset, so tools that read it from outside (``time``,
    ``ru_maxrss``) still see the run's peak. Elsewhere than Linux: the peak so far
    (``ru_maxrss``). Use as a context manager (the sampling thread stops at its end).
    """

    def __init__(self, progress: Callable[[str, float], None] | None = None) -> None:
        self.start = self.last = time.monotonic()
        self.laps: dict[str, float] = {}
        self.peak_mib: dict[str, int] = {}
        self.progress = progress
        self._high_water = _high_water_mark()
        self._seen = 0
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None
        if self._high_water is not None:
            self._sampler = threading.Thread(target=self._sample, name="hmb-rss", daemon=True)
            self._sampler.start()

    def __enter__(self) -> Laps:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._sampler is not None:
            self._sampler.join()

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self._seen = max(self._seen, _resident())

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self.laps[name] = round(now - self.last, 3)
        self.last = now
        high = _high_water_mark()
        if high is None:
            scale = 1 if sys.platform == "darwin" else 1024
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
        else:
            assert self._high_water is not None
            peak = high if high > self._high_water else max(self._seen, _resident())
            self._high_water, self._seen = high, 0
        self.peak_mib[name] = peak // _MiB
        if self.progress is not None:
            self.progress(name, self.laps[name])


def _high_water_mark() -> int | None:
    """The process's peak resident memory in bytes (Linux VmHWM), None where unknown."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def _resident() -> int:
    """The process's resident memory in bytes now (Linux)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
