"""Shared pytest setup. Fixtures live in tests/fixtures/<area>.py, one file per area."""

from __future__ import annotations

import os

# Never talk to the real Hub from tests; Xet stays off except where a test turns it on
# (tests/test_localhub_xet.py, the local Hub's Xet CAS routes).
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models run far faster on one thread; on a busy 2-core machine extra threads only contend.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def one_thread():
    """Every test runs on one torch thread, whatever an earlier test or library call set.

    Tiny matmuls on a shared 2-core machine: a second OpenMP thread only spins (~100x slower), and
    the distributed tests compare a serial run with one-thread workers bit for bit.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


pytest_plugins: list[str] = [
    "tests.fixtures.merge",
    "tests.fixtures.zoo",
    "tests.fixtures.hubio",
    "tests.fixtures.localhub",
    "tests.fixtures.space",
    "tests.fixtures.compare",
]
