"""Dev and test rows: the fitness a search optimises, and the rows it never reads.

Every number a search prints comes from the rows it optimised unless some are held out. So each
task's rows are split once into **dev** (the fitness, all a strategy sees) and **test** (scored
for the winner and the baselines at the end, reported on the card):

- by fraction (default 30% test): a row goes to test when a hash of the seed and its prompt
  falls below the fraction. The split is deterministic, independent of row order (shuffle the
  file, same split), and a prompt that occurs twice lands on one side, so test never leaks into
  dev through a duplicate. A task of two or more rows keeps at least one row on each side.
- by files (``--test-tasks``): one test file per task, in the order of the dev files.

A run refuses a test file that is also a dev file (same path or same rows), and refuses to
optimise against well-known public benchmarks (matched by task name, as mergekit-evolve's
``check_for_naughty_config`` does) unless the user passes ``allow_benchmark_fitness``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, TaskFileError
from .evaluate import Task, load_task, load_tasks

__all__ = [
    "BENCHMARK_PREFIXES",
    "DEFAULT_TEST_FRACTION",
    "Split",
    "check_benchmark_fitness",
    "split_tasks",
    "test_mask",
]

DEFAULT_TEST_FRACTION = 0.3
# Public benchmarks whose test sets must not become a fitness (the names mergekit-evolve
# refuses). A name ending in "_train" is a benchmark's training split: allowed.
BENCHMARK_PREFIXES = (
    "mmlu",
    "hendrycks",
    "agieval",
    "gsm8k",
    "hellaswag",
    "winogrande",
    "arc_",
    "ai2_arc",
    "truthfulqa",
    "bigbench",
    "piqa",
    "openbookqa",
    "leaderboard",
)


@dataclass(frozen=True)
class Split:
    """The tasks' dev rows (fitness) and test rows (reported), and how they were chosen."""

    dev: list[Task]
    test: list[Task]
    how: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """One line for cards and summaries: where the test rows come from."""
        if self.how.get("kind") == "files":
            return "test rows from separate test files, never read by the search"
        pct = round(100 * float(self.how.get("test_fraction", 0)))
        return (
            f"{pct}% of each task's rows held out by a hash of the prompt (seed "
            f"{self.how.get('seed', 0)}), never read by the search"
        )


def _unit(seed: int, prompt: str) -> float:
    digest = hashlib.sha256(f"{seed}\0{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def test_mask(name: str, keys: Sequence[str], test_fraction: float, seed: int = 0) -> list[bool]:
    """Which rows of a task go to test, by the hash of each row's key (its prompt, or for an
    lm-eval task its document); order-independent, and equal keys land on one side."""
    if len(keys) < 2:
        raise TaskFileError(
            f"Task {name!r} has one row; it cannot be split into dev and test. Add rows "
            "or give a test file with --test-tasks."
        )
    units = [_unit(seed, key) for key in keys]
    is_test = [u < test_fraction for u in units]
    if all(is_test) or not any(is_test):
        # keep one row on the short side: the key whose hash is nearest the threshold
        nearest = min(range(len(units)), key=lambda i: abs(units[i] - test_fraction))
        is_test = [t != (key == keys[nearest]) for t, key in zip(is_test, keys, strict=True)]
        if all(is_test) or not any(is_test):
            raise TaskFileError(f"Task {name!r} repeats one row on every line; it cannot be split.")
    return is_test


def split_task(task: Task, test_fraction: float, seed: int = 0) -> tuple[Task, Task]:
    """One task's (dev, test) by the hash of each prompt; file order kept on each side."""
    is_test = test_mask(task.name, [ex.prompt for ex in task.examples], test_fraction, seed)
    dev = tuple(ex for ex, t in zip(task.examples, is_test, strict=True) if not t)
    test = tuple(ex for ex, t in zip(task.examples, is_test, strict=True) if t)
    return Task(task.name, dev, task.path), Task(task.name, test, task.path)


def split_tasks(
    paths: Sequence[str | Path],
    *,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    test_paths: Sequence[str | Path] = (),
    seed: int = 0,
    limit: int | None = None,
    allow_benchmark_fitness: bool = False,
) -> Split:
    """Load the task files and split them into dev and test rows.

    Args:
        paths: the task JSONL files (the dev rows come from them).
        test_fraction: share of each task's rows held out, in (0, 1); ignored with test_paths.
        test_paths: one test file per task, in the same order (then dev = the whole files).
        seed: part of the row hash: another seed, another split.
        limit: at most this many dev rows and this many test rows per task (first in file order).
        allow_benchmark_fitness: optimise against a public benchmark's rows anyway.

    Raises:
        ConfigError: a fraction outside (0, 1), a test file that is a dev file, a benchmark name.
        TaskFileError: a missing or malformed file, a task too small to split.
    """
    check_split_settings(test_fraction, test_paths, limit)
    tasks = load_tasks(paths)
    check_benchmark_fitness([t.name for t in tasks], allow=allow_benchmark_fitness)
    if test_paths:
        if len(test_paths) != len(tasks):
            raise ConfigError(
                f"Give one test file per task: {len(tasks)} task file(s), "
                f"{len(test_paths)} test file(s) (matched in order)."
            )
        dev_files = {Path(p).resolve(): Path(p) for p in paths}
        test_tasks = []
        for task, path in zip(tasks, test_paths, strict=True):
            if Path(path).resolve() in dev_files:
                raise ConfigError(
                    f"{path} is both a dev file (--tasks) and a test file (--test-tasks); a test "
                    "file must hold rows the search never reads."
                )
            held = load_task(path, name=task.name)
            if held.digest == task.digest:
                raise ConfigError(
                    f"Test file {path} holds the same rows as the task file {task.path}; a test "
                    "file must hold rows the search never reads."
                )
            test_tasks.append(held)
        how: dict[str, Any] = {"kind": "files", "test_files": [Path(p).name for p in test_paths]}
        dev = tasks
    else:
        pairs = [split_task(t, float(test_fraction), seed) for t in tasks]
        dev = [d for d, _ in pairs]
        test_tasks = [t for _, t in pairs]
        how = {"kind": "fraction", "test_fraction": float(test_fraction), "seed": seed}
    how["limit"] = limit
    dev = [t.head(limit) for t in dev]
    test_tasks = [t.head(limit) for t in test_tasks]
    how["dev_rows"] = {t.name: len(t.examples) for t in dev}
    how["test_rows"] = {t.name: len(t.examples) for t in test_tasks}
    return Split(dev=dev, test=test_tasks, how=how)


def check_split_settings(
    test_fraction: float, test_paths: Sequence[Any], limit: int | None
) -> None:
    """The split's own settings, checked before anything is read."""
    if not test_paths and not (0.0 < float(test_fraction) < 1.0):
        raise ConfigError(
            f"--test-fraction must be between 0 and 1 (exclusive); got {test_fraction}."
        )
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be a positive number of examples; got {limit}.")


def check_benchmark_fitness(names: Sequence[str], *, allow: bool = False) -> None:
    """Refuse task names of public benchmarks as a fitness unless ``allow``."""
    if allow:
        return
    for name in names:
        low = name.lower()
        if low.endswith("_train"):
            continue
        for prefix in BENCHMARK_PREFIXES:
            if low.startswith(prefix):
                raise ConfigError(
                    f"Task {name!r} looks like the public benchmark {prefix.rstrip('_')!r}: "
                    "optimising a merge against a benchmark's test rows makes its score "
                    "meaningless. Rename a file of your own rows, or pass "
                    "--allow-benchmark-fitness if these rows are not that benchmark's test set."
                )
