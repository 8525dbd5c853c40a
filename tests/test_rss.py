"""RssLog: each step's resident memory, the most it reached, and the process's peak."""

from __future__ import annotations

import sys

import pytest

from hub_merge import rss

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc/self/status"
)


def test_a_step_that_allocated_and_freed_shows_its_peak_not_just_its_end():
    mib = 2**20
    with rss.RssLog(interval=0.01) as log:
        log.mark("start")
        buf = bytearray(300 * mib)  # zero-filled: every page touched, resident
        buf[::4096] = b"x" * len(buf[::4096])
        del buf
        rss.mark("allocate and free")  # the module-level mark writes to the running log
        log.mark("idle")
    rss.mark("after the log")  # no log running: nothing recorded, no error
    start, spike, idle = log.steps
    assert [s.step for s in log.steps] == ["start", "allocate and free", "idle"]
    assert spike.step_peak >= start.now + 250 * mib  # the freed buffer is in the step's peak
    assert spike.now < spike.step_peak - 200 * mib  # ...and not in what it holds at its end
    assert idle.step_peak < spike.step_peak - 200 * mib  # the next step does not inherit it
    assert start.peak <= spike.peak == idle.peak <= rss.peak_rss_bytes()
    assert spike.to_json()["step_peak_mb"] >= 250 + start.now // mib
