"""Resident memory (RSS) at each step of a long run: now, the most during the step, the most so far.

The demo's goal includes its peak memory (issue 24: at most 3 GB on the smol zoo), and a peak is
only fixable once we know which step reaches it. ``tracemalloc`` does not see torch's tensors
and the process's peak alone does not say when it happened, so :class:`RssLog` reads Linux's
``/proc/self/status`` (VmRSS, VmHWM) at each step boundary and, from a daemon thread, a few
times a second in between: a step's peak is the kernel's exact high-water mark when the process
reached a new peak during it, else the largest sample. Written by hand: psutil is not a
dependency, and it would not attribute the peak to a step either.

Library code marks its own phases with :func:`mark` (e.g. DAM's teacher cache), which does
nothing unless a log is running, so a compare outside the demo pays nothing.
"""

from __future__ import annotations

import resource
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

__all__ = ["RssLog", "RssStep", "mark", "peak_rss_bytes", "return_freed_memory", "rss_bytes"]

_STATUS = "/proc/self/status"
_ACTIVE: RssLog | None = None  # the running log that mark() writes to, if any


def _status() -> tuple[int | None, int | None]:
    """(VmRSS, VmHWM) in bytes from /proc; (None, None) where there is no /proc (macOS)."""
    now = hwm = None
    try:
        with open(_STATUS) as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    now = int(line.split()[1]) * 1024
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1]) * 1024
    except OSError:
        pass
    return now, hwm


_LIBC: Any = None


def return_freed_memory() -> None:
    """Give the heap's freed pages back to the OS (glibc's ``malloc_trim``; elsewhere nothing).

    glibc serves tensors of up to 32 MB from its heap once a few have been freed, and keeps
    what is freed there: on the smol zoo a search's evicted state dicts left 1.2 GB resident
    that no tensor used (RSS 2.7 GiB, 1.6 GiB after a trim). Callers that just dropped a
    model-sized set of tensors (an evicted state dict, a finished strategy) call this. Written
    by hand: neither torch nor the standard library exposes it.
    """
    global _LIBC
    if not sys.platform.startswith("linux"):
        return
    if _LIBC is None:
        import ctypes

        try:
            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim  # noqa: B018 - musl and others lack it
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


def rss_bytes() -> int | None:
    """The resident memory of this process now, in bytes (None where /proc is missing)."""
    return _status()[0]


def peak_rss_bytes() -> int:
    """Peak resident memory of this process (and of finished children), in bytes."""
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    usage = [
        resource.getrusage(w).ru_maxrss for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    ]
    return max(usage) * scale


@dataclass(frozen=True)
class RssStep:
    """One step of a run: its name, RSS at its end, the most during it, the most so far (bytes)."""

    step: str
    now: int
    step_peak: int
    peak: int
    seconds: float

    def to_json(self) -> dict[str, object]:
        mib = 2**20
        return {
            "step": self.step,
            "rss_mb": round(self.now / mib),
            "step_peak_mb": round(self.step_peak / mib),
            "peak_mb": round(self.peak / mib),
            "seconds": round(self.seconds, 1),
        }


class RssLog:
    """Records :class:`RssStep` rows; ``with RssLog() as log: ... log.mark("pull")``.

    ``mark(name)`` ends the step called ``name`` (the work since the previous mark). While the
    log runs, :func:`mark` anywhere in the process writes to it too.
    """

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.steps: list[RssStep] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        now, hwm = _status()
        self._sampled = now or 0
        self._hwm = hwm or peak_rss_bytes()
        self._t = time.monotonic()

    def __enter__(self) -> RssLog:
        global _ACTIVE
        _ACTIVE = self
        if rss_bytes() is not None:  # sampling only where /proc exists
            self._thread = threading.Thread(target=self._sample, name="rss-log", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        global _ACTIVE
        if _ACTIVE is self:
            _ACTIVE = None
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            now = rss_bytes() or 0
            with self._lock:
                self._sampled = max(self._sampled, now)

    def mark(self, step: str) -> RssStep:
        """End ``step``: record RSS now, the most it reached since the last mark, the peak."""
        now, hwm = _status()
        if hwm is None:  # no /proc: only the process's peak is known
            hwm = peak_rss_bytes()
            now = hwm if now is None else now
        with self._lock:
            step_peak = hwm if hwm > self._hwm else max(self._sampled, now or 0)
            self._sampled = now or 0
        self._hwm = hwm
        t = time.monotonic()
        row = RssStep(step, now or 0, step_peak, hwm, t - self._t)
        self._t = t
        self.steps.append(row)
        return row


def mark(step: str) -> None:
    """End ``step`` in the running :class:`RssLog`, if any (a no-op otherwise)."""
    log = _ACTIVE
    if log is not None:
        log.mark(step)
