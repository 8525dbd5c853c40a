"""benchmarks/gpu_check.sh: the one GPU check stays runnable (its --dry-run runs it on CPU)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
STEPS = (
    "GPU-marked tests",
    "merge speed",
    "kinship speed",
    "synthetic zoo (tiny)",
    "search speed",
    "DAM steps",
)


def _run(*args: str, out: Path, timeout: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable}
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def test_unknown_argument_is_refused(tmp_path):
    res = _run("--fast", out=tmp_path, timeout=60)
    assert res.returncode == 2
    assert "unknown argument '--fast'" in res.stderr
    assert not (tmp_path / "gpu_check_report.md").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a CPU-only machine")
def test_real_run_without_cuda_says_so(tmp_path):
    res = _run(out=tmp_path, timeout=120)
    assert res.returncode == 3, res.stderr
    report = (tmp_path / "gpu_check_report.md").read_text()
    assert "environment unusable" in report
    assert "no CUDA device" in report


@pytest.mark.slow
def test_dry_run_runs_every_step_and_writes_one_report(tmp_path):
    res = _run("--dry-run", out=tmp_path, timeout=1200)
    assert res.returncode == 0, res.stderr[-3000:]
    assert [p.name for p in tmp_path.iterdir()] == ["gpu_check_report.md"]
    report = (tmp_path / "gpu_check_report.md").read_text()
    assert report.startswith("# GPU check: dry run (CPU, tiny sizes)")
    for name in STEPS:
        assert f"| {name} | ok |" in report, name
    # each benchmark printed its result line, not only an exit status
    assert "speedup (mergekit wall / hub-merge wall)" in report
    assert "speed-up (pairwise / one-pass wall time)" in report
    assert "| 3 in-place: InPlaceModel" in report
    assert "steps/s" in report
    assert "SKIPPED" in report  # the GPU test was collected and skipped on CPU
