"""The table of ``search_quality.py``: baseline rows, one row per registered key, printed.

Rendering only: it reads ``results.json``'s runs and exact-match scores and runs nothing.
"""

from __future__ import annotations

import statistics
from typing import Any

from search_quality_bench import Bench
from search_quality_rows import ROWS


def task_mean(scores: dict[str, float]) -> float:
    """The mean over tasks of one run's scores (the table's and the log's one number)."""
    if not scores:  # MoA has no dev scores (it is not searched)
        return float("nan")
    return sum(scores.values()) / len(scores)


def _fmt(values: list[float], digits: int = 3) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _baseline_rows(bench: Bench, baselines: dict[str, Any]) -> list[dict[str, Any]]:
    experts = {k.split(":", 1)[1]: v for k, v in baselines.items() if k.startswith("expert:")}
    n = len(experts)
    best = min(experts, key=lambda e: task_mean(experts[e]["dev"]))
    # The oracle answers each task with its own expert: on smol-wide, the one of the task's 2-3
    # experts that is best on the task's dev rows.
    own = {
        t: [e for e in experts if bench.expert_tasks[e] == t] or list(experts) for t in bench.tasks
    }
    oracle_of = {t: min(own[t], key=lambda e: experts[e]["dev"][t]) for t in bench.tasks}
    return [
        {"key": "best-expert", "title": f"best single expert ({best})",
         "test": [experts[best]["test"]], "evaluations": [n], "seconds": [], "em_models": [best]},
        {"key": "uniform", "title": "uniform average (linear)", "test": [baselines["uniform"]["test"]],
         "evaluations": [1], "seconds": [], "em_models": sorted(experts)},
        {"key": "oracle", "title": "oracle router (best expert per task)",
         "test": [{t: experts[oracle_of[t]]["test"][t] for t in bench.tasks}],
         "evaluations": [n], "seconds": [], "oracle_of": oracle_of},
    ]  # fmt: skip


def build_table(bench: Bench, results: dict[str, Any], keys: list[str]) -> list[dict[str, Any]]:
    """Baseline rows, then one row per registered key with every finished seed."""
    runs = results["runs"]
    if not runs:
        return []
    # the baselines come from a search row (MoE and MoA rows are not searches and have none)
    first = next((r for r in runs.values() if r.get("baselines")), None)
    if first is None:
        raise SystemExit("Run at least one search row (e.g. --rows greedy,...) for the baselines.")
    table = _baseline_rows(bench, first["baselines"])
    for key in keys:
        done = sorted((r for r in runs.values() if r["key"] == key), key=lambda r: r["seed"])
        if done:
            table.append({"key": key, "title": ROWS[key].title, "runs": done,
                          "test": [r["test"] for r in done],
                          "evaluations": [r["evaluations"] for r in done],
                          "seconds": [r["seconds"] for r in done]})  # fmt: skip
    return table


def print_table(bench: Bench, table: list[dict[str, Any]], em: dict[str, Any], header: str) -> None:
    uniform = task_mean(table[1]["test"][0])
    oracle = task_mean(table[2]["test"][0])
    print(header)
    print("test answer-token loss, lower is better; several seeds: mean ± std; EM: exact match")
    head = ["row", "seeds", "mean test loss", "vs uniform", "vs oracle", *bench.tasks, "EM test",
            "evals", "time s"]  # fmt: skip
    print("| " + " | ".join(head) + " |")
    print("| --- | " + " | ".join("---:" for _ in head[1:]) + " |")
    for r in table:
        means = [task_mean(t) for t in r["test"]]
        # MoA is scored by exact match, not loss: its cells are EM, and a loss ratio means nothing
        em_row = any(x["extra"].get("metric") == "exact_match" for x in r.get("runs", []))
        cells = [
            r["title"],
            str(len(r["test"])) if "runs" in r else "-",
            ("EM " if em_row else "") + _fmt(means),
            "-" if em_row else f"{statistics.mean(means) / uniform:.3f}",
            "-" if em_row else f"{statistics.mean(means) / oracle:.3f}",
            *[_fmt([t[name] for t in r["test"]]) for name in bench.tasks],
            f"{task_mean(em[r['key']]):.3f}" if r["key"] in em else "",
            _fmt([float(e) for e in r["evaluations"]], 0),
            _fmt(r["seconds"], 0) if r["seconds"] else "-",
        ]
        print("| " + " | ".join(cells) + " |")
    for r in table:
        if "runs" in r:
            notes = "; ".join(f"seed {x['seed']}: {x['note']}" for x in r["runs"])
            how = r["runs"][0]["extra"]
            if "settings" in how:
                notes += f" (settings {how['settings']}, budget {how.get('budget')})"
            print(f"- {r['title']}: {notes}")
