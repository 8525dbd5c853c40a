"""RssLog: each step's resident memory, the most it reached, and the process's peak."""

from __future__ import annotations

import sys
import time

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
        # held for several sampling intervals: the sampler is a thread, and the allocation
        # above holds the GIL, so a buffer freed at once may never be sampled under load
        time.sleep(0.3)
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


_HEAP = """
import torch
from hub_merge import rss

pins = []
for _ in range(2):  # after the first round glibc serves these sizes from its heap
    tensors = []
    for _ in range(100):  # 3.5 MB each, 350 MB, each with a live block above it
        tensors.append(torch.ones(576 * 1536))
        pins.append(torch.ones(1024))
    del tensors
before = rss.rss_bytes()
rss.return_freed_memory()
print(before, rss.rss_bytes())
"""


@pytest.mark.skipif(
    __import__("platform").libc_ver()[0] != "glibc", reason="glibc's heap and malloc_trim"
)
def test_freed_tensors_left_on_the_heap_go_back_to_the_os():
    """Model-sized sets of mid-sized tensors, freed, stay resident in glibc's heap until
    return_freed_memory (what the search's cache eviction and the compare's release call).
    In a fresh process: what the heap keeps depends on everything allocated before."""
    import subprocess

    out = subprocess.run(
        [sys.executable, "-c", _HEAP], capture_output=True, text=True, check=True, timeout=120
    )
    before, after = (int(v) for v in out.stdout.split())
    assert after < before - 200 * 2**20, (before, after)
