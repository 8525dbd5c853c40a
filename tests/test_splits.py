"""Dev/test splits: deterministic, row-order independent, and refusing what would leak."""

from __future__ import annotations

import json
import random

import pytest

from hub_merge.cli import main
from hub_merge.errors import ConfigError, TaskFileError
from hub_merge.splits import split_tasks


def write_task(path, prompts, answers=None):
    rows = [{"prompt": p, "answer": (answers or {}).get(p, p[::-1])} for p in prompts]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


PROMPTS = [f"reverse {i:03d}" for i in range(200)]


def test_split_is_deterministic_order_independent_and_about_seventy_thirty(tmp_path):
    a = write_task(tmp_path / "rev.jsonl", PROMPTS)
    shuffled = list(PROMPTS)
    random.Random(1).shuffle(shuffled)
    b = write_task(tmp_path / "rev2.jsonl", shuffled)
    first, again, moved = split_tasks([a]), split_tasks([a]), split_tasks([b])
    test = {ex.prompt for ex in first.test[0].examples}
    dev = {ex.prompt for ex in first.dev[0].examples}
    assert test == {ex.prompt for ex in again.test[0].examples}
    assert test == {ex.prompt for ex in moved.test[0].examples}  # row order does not matter
    assert not test & dev and test | dev == set(PROMPTS)
    assert 40 <= len(test) <= 80  # 30% of 200, by a hash
    # another seed, another split; another fraction, another size
    assert {ex.prompt for ex in split_tasks([a], seed=7).test[0].examples} != test
    assert len(split_tasks([a], test_fraction=0.5).test[0].examples) > len(test)
    # dev keeps the file order; limit caps each side
    order = [ex.prompt for ex in first.dev[0].examples]
    assert order == [p for p in PROMPTS if p in dev]
    capped = split_tasks([a], limit=5)
    assert len(capped.dev[0].examples) == len(capped.test[0].examples) == 5
    assert first.how["dev_rows"] == {"rev": len(dev)} and "prompt" in first.describe()


def test_a_repeated_prompt_never_lands_on_both_sides(tmp_path):
    prompts = PROMPTS[:50] + PROMPTS[:50]
    split = split_tasks([write_task(tmp_path / "dup.jsonl", prompts)])
    dev = {ex.prompt for ex in split.dev[0].examples}
    assert not dev & {ex.prompt for ex in split.test[0].examples}


def test_tiny_tasks_keep_a_row_on_each_side(tmp_path):
    split = split_tasks([write_task(tmp_path / "two.jsonl", ["a b", "c d"])], test_fraction=0.01)
    assert len(split.dev[0].examples) == len(split.test[0].examples) == 1
    with pytest.raises(TaskFileError, match="one row"):
        split_tasks([write_task(tmp_path / "one.jsonl", ["a b"])])


def test_refusals_are_typed_and_name_the_fix(tmp_path):
    task = write_task(tmp_path / "rev.jsonl", PROMPTS)
    for bad in (0.0, 1.0, -0.2, 1.5):
        with pytest.raises(ConfigError, match="--test-fraction must be between 0 and 1"):
            split_tasks([task], test_fraction=bad)
    with pytest.raises(ConfigError, match="both a dev file"):
        split_tasks([task], test_paths=[task])
    copy = write_task(tmp_path / "copy.jsonl", PROMPTS)
    with pytest.raises(ConfigError, match="same rows"):
        split_tasks([task], test_paths=[copy])
    with pytest.raises(ConfigError, match="one test file per task"):
        split_tasks([task], test_paths=[copy, copy])
    held = write_task(tmp_path / "held.jsonl", [f"held {i}" for i in range(20)])
    split = split_tasks([task], test_paths=[held])
    assert split.test[0].name == "rev" and len(split.dev[0].examples) == 200
    assert split.how["kind"] == "files" and "separate test files" in split.describe()
    # public benchmarks are not a fitness unless the user says so; their train splits are
    gsm = write_task(tmp_path / "gsm8k.jsonl", PROMPTS)
    with pytest.raises(ConfigError, match="public benchmark 'gsm8k'.*--allow-benchmark-fitness"):
        split_tasks([gsm])
    assert split_tasks([gsm], allow_benchmark_fitness=True).dev[0].name == "gsm8k"
    assert split_tasks([write_task(tmp_path / "mmlu_train.jsonl", PROMPTS)]).dev


def test_cli_refuses_bad_search_settings_before_anything_is_scored(tmp_path, capsys):
    task = write_task(tmp_path / "rev.jsonl", PROMPTS)
    out = tmp_path / "run"
    common = ["search", "--base", "nowhere/base", "--experts", "a/b", "c/d", "--out", str(out)]
    cases = [
        (["--tasks", str(task), "--strategy", "annealing"], "annealing"),
        (["--tasks", str(task), "--test-fraction", "1.2"], "--test-fraction"),
        (["--tasks", str(task), "--test-tasks", str(task)], "both a dev file"),
        (["--tasks", str(write_task(tmp_path / "hellaswag.jsonl", PROMPTS))], "public benchmark"),
    ]
    for args, message in cases:
        code = main([*common, *args])
        err = capsys.readouterr().err
        assert code == 2 and message in err, (args, err)
        assert len(err.strip().splitlines()) == 1
        assert not out.exists()  # refused before any download, score or file


def test_runs_with_other_seeds_share_their_test_rows(tiny_zoo, tmp_path):
    """--seed changes the strategy's draws, never the test rows: a 3-seed spread is the
    strategy's, measured on one test set (--split-seed changes the split)."""
    from hub_merge.search import SearchConfig, search

    def run(seed: int, split_seed: int = 0):
        out = tmp_path / f"run-{seed}-{split_seed}"
        search(
            SearchConfig(
                base=str(tiny_zoo.base),
                experts=[str(tiny_zoo.adapters["add"]), str(tiny_zoo.adapters["sort"])],
                tasks=[str(tiny_zoo.tasks["add"]), str(tiny_zoo.tasks["sort"])],
                out=str(out),
                strategy="greedy",
                settings={"k": 2, "generations": 1},
                seed=seed,
                split_seed=split_seed,
                limit=4,
                device="cpu",
                progress=False,
                materialize=[],
            )
        )
        return json.loads((out / "state.json").read_text())["settings"]["test"]

    first = run(0)
    assert run(1) == first  # same test rows (their digests) for another run seed
    assert run(0, split_seed=1) != first  # another split seed, another split
