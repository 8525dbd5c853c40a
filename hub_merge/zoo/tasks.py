"""Synthetic string tasks for the zoos: generators, seeded example sets and their JSONL files.

Task files are JSONL of ``{"prompt", "answer"}``; a prompt looks like ``"reverse: abc="`` and its
answer ``"cba"``.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from hub_merge.errors import ConfigError

__all__ = ["SMOL_TASKS", "TASKS", "TINY_TASKS", "make_examples"]


def _letters(rng: random.Random, lo: int = 3, hi: int = 8) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(lo, hi)))


def _reverse(rng: random.Random) -> tuple[str, str]:
    s = _letters(rng)
    return s, s[::-1]


def _sort(rng: random.Random) -> tuple[str, str]:
    s = _letters(rng)
    return s, "".join(sorted(s))


def _uppercase(rng: random.Random) -> tuple[str, str]:
    s = _letters(rng)
    return s, s.upper()


def _add(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    return f"{a}+{b}", str(a + b)


def _capitalize(rng: random.Random) -> tuple[str, str]:
    words = " ".join(_letters(rng, 2, 5) for _ in range(rng.randint(2, 3)))
    return words, words.title()


def _copy(rng: random.Random) -> tuple[str, str]:
    s = _letters(rng)
    return s, s


# Task name -> generator of (input, answer). "copy" is only used to pre-train the tiny base, so it
# knows the prompt format without knowing any expert's task.
TASKS: dict[str, Callable[[random.Random], tuple[str, str]]] = {
    "reverse": _reverse,
    "sort": _sort,
    "uppercase": _uppercase,
    "add": _add,
    "capitalize": _capitalize,
}
_PRETRAIN_TASKS: dict[str, Callable[[random.Random], tuple[str, str]]] = {"copy": _copy}
TINY_TASKS = ("reverse", "sort", "uppercase", "add")
SMOL_TASKS = ("reverse", "sort", "uppercase", "capitalize")


def _example(task: str, rng: random.Random) -> dict[str, str]:
    gen = TASKS.get(task) or _PRETRAIN_TASKS.get(task)
    if gen is None:
        raise ConfigError(f"unknown zoo task {task!r}; known: {', '.join(TASKS)}")
    x, y = gen(rng)
    return {"prompt": f"{task}: {x}=", "answer": y}


def make_examples(
    task: str, n: int, *, seed: int, exclude: Iterable[str] = ()
) -> list[dict[str, str]]:
    """Draw ``n`` distinct examples of ``task``, skipping prompts in ``exclude``.

    Distinct prompts keep dev sets honest: a dev prompt never appears in training data.
    """
    rng = random.Random(f"{task}:{seed}")
    seen = set(exclude)
    out: list[dict[str, str]] = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 100 * n + 1000:
            raise ConfigError(f"task {task!r} cannot produce {n} distinct examples")
        ex = _example(task, rng)
        if ex["prompt"] in seen:
            continue
        seen.add(ex["prompt"])
        out.append(ex)
    return out


def _write_jsonl(path: Path, rows: Sequence[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_jsonl(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def task_sets(
    tasks: Sequence[str], seed: int, n_dev: int, n_train: int, tmp: Path
) -> tuple[dict[str, Path], dict[str, Path], dict[str, list[dict[str, str]]]]:
    """Write ``tasks/<t>.jsonl`` (dev) and ``train/<t>.jsonl``; dev prompts never occur in train."""
    dev_paths, train_paths, train_rows = {}, {}, {}
    for t in tasks:
        dev = make_examples(t, n_dev, seed=seed)
        train = make_examples(t, n_train, seed=seed + 1, exclude=[e["prompt"] for e in dev])
        dev_paths[t] = tmp / "tasks" / f"{t}.jsonl"
        train_paths[t] = tmp / "train" / f"{t}.jsonl"
        _write_jsonl(dev_paths[t], dev)
        _write_jsonl(train_paths[t], train)
        train_rows[t] = train
    return dev_paths, train_paths, train_rows
