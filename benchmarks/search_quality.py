"""Quality of every search strategy on one zoo, scored on held-out TEST rows.

Not a test: it prints one table (and keeps results.json) with, per row, the mean test answer-token
loss (lower is better), its ratio to the uniform average and to the oracle router measured in the
same run, the loss per task, exact match on test rows for the top rows, evaluations and wall time.

Rows:
- baselines (every search scores them first; they stay its candidates): the best single expert
  (by dev fitness), the uniform average (linear, every expert), and the oracle router (each task
  answered by its best expert for that task on dev): the ceiling for one merged model;
- one row per search strategy, run through the public API ``hub_merge.search.search(config)``.
  Stochastic rows run ``--seeds`` seeds and show mean ± standard deviation over them.

Each (row, seed) run is saved to ``OUT/results.json`` as it finishes, so a long run can be stopped
and continued (same ``--out``), and ``--table`` prints the table of what is done. A later strategy
adds a row with ``search_row`` in ``search_quality_rows.py`` (or any ``RowBuilder`` in ``ROWS`` for
rows that are not a search, such as MoE or MoA, which return an ``Outcome`` themselves). This file
is the command line; the bench (``search_quality_bench.py``), the rows and the table
(``search_quality_table.py``) live beside it.

    python benchmarks/search_quality.py --zoo smol --limit 16 --budget 60 --out /tmp/sq-smol
    python benchmarks/search_quality.py --zoo smol-wide --rows greedy,greedy-kinship --out /tmp/sq-w
    python benchmarks/search_quality.py --zoo tiny --limit 8 --budget 20 --seeds 1  # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling modules below

from search_quality_bench import Bench, ExactMatch, write_split  # noqa: E402
from search_quality_rows import DEFAULT_ROWS, ROWS  # noqa: E402
from search_quality_table import build_table, print_table, task_mean  # noqa: E402


def _load_zoo(name: str) -> Any:
    from hub_merge import zoo as zoos

    builders = {
        "smol": zoos.build_smol_zoo,
        "smol-wide": zoos.build_smol_wide_zoo,
        "tiny": zoos.build_tiny_zoo,
    }
    return builders[name]()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--zoo", choices=["smol", "smol-wide", "tiny"], default="smol")
    add("--rows", default=",".join(DEFAULT_ROWS), help=f"comma-separated; known: {', '.join(ROWS)}")
    add("--limit", type=int, default=16, help="dev rows per task the searches score (fitness)")
    add("--test-limit", type=int, default=None, help="test rows per task (default: all)")
    add("--test-fraction", type=float, default=0.3, help="share of each task's rows held out")
    add("--budget", type=int, default=60, help="evaluations per evolve run, baselines included")
    add("--generations", type=int, default=4, help="greedy's maximum generations")
    add("--evolve-method", default="ties")
    add("--layer-groups", type=int, default=3)
    add("--seeds", type=int, default=3, help="seeds of each stochastic row")
    add(
        "--only-seed",
        type=int,
        default=None,
        help="run only this seed (several processes can share a machine's cores)",
    )
    add("--exact-match", type=int, default=2, metavar="N",
        help="exact match on test for the baselines and the N best search rows (0: none)")  # fmt: skip
    add("--em-limit", type=int, default=16, help="test rows per task for exact match")
    add("--dam-steps", type=int, default=12, help="DAM's gradient steps")
    add("--dam-rows", type=int, default=16, help="DAM's training prompts per expert")
    add("--device", default="auto")
    add("--out", default=None, help="folder of run folders and results.json (reused: resumes)")
    add("--table", action="store_true", help="print the table of finished runs; run nothing")
    args = parser.parse_args()
    keys = [k.strip() for k in args.rows.split(",") if k.strip()]
    unknown = [k for k in keys if k not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; known: {', '.join(ROWS)}")

    zoo = _load_zoo(args.zoo)
    models = {**zoo.adapters} if args.zoo == "tiny" else {**zoo.adapters, **zoo.experts}
    out = Path(args.out or tempfile.mkdtemp(prefix="search-quality-"))
    out.mkdir(parents=True, exist_ok=True)
    task_files = {t: str(p) for t, p in zoo.tasks.items()}
    dev_files, test_files = write_split(
        task_files, out, args.test_fraction, args.limit, args.test_limit
    )
    bench = Bench(
        base=str(zoo.base),
        experts={n: str(models[n]) for n in sorted(models)},
        expert_tasks={n: zoo.task_of(n) for n in sorted(models)},
        task_files=task_files,
        out=out,
        dev_files=dev_files,
        test_files=test_files,
        budget=args.budget,
        generations=args.generations,
        evolve_method=args.evolve_method,
        layer_groups=args.layer_groups,
        device=args.device,
        train_files={t: str(p) for t, p in zoo.train.items()},
        dam_steps=args.dam_steps,
        dam_rows=args.dam_rows,
    )
    path = out / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {"runs": {}, "exact_match": {}}
    results["zoo"] = args.zoo

    def save() -> None:
        """Merge this process's runs into results.json under a lock: several processes may share
        one --out (e.g. one per row, to use more of a machine), each adding its own runs."""
        from filelock import FileLock

        with FileLock(str(path) + ".lock"):
            if path.is_file():
                on_disk = json.loads(path.read_text())
                for part in ("runs", "exact_match"):
                    results[part] = {**on_disk.get(part, {}), **results[part]}
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(results, indent=2))
            tmp.replace(path)

    for key in [] if args.table else keys:
        builder = ROWS[key]
        seeds = range(args.seeds if builder.stochastic else 1)
        for seed in [x for x in seeds if args.only_seed is None or x == args.only_seed]:
            run_id = f"{key}/seed{seed}"
            if run_id in results["runs"]:
                continue
            outcome = builder.run(bench, seed)
            results["runs"][run_id] = {"key": key, "seed": seed, **asdict(outcome)}
            save()
            print(
                f"done: {builder.title} seed {seed}: mean test loss {task_mean(outcome.test):.4f} "
                f"(dev {task_mean(outcome.dev):.4f}), {outcome.evaluations} evaluations, "
                f"{outcome.seconds:.0f} s, {outcome.note}",
                flush=True,
            )

    table = build_table(bench, results, keys)
    if not table:
        print("no finished runs yet")
        return
    if args.exact_match and not args.table:
        _exact_match(bench, table, results, args)
        save()
    header = (
        f"zoo={args.zoo} experts={len(bench.experts)} tasks={len(bench.tasks)} "
        f"dev rows/task<={args.limit} test fraction={args.test_fraction} "
        f"test rows/task={args.test_limit or 'all'} (settings and budget of each row: below)"
    )
    print_table(bench, table, results["exact_match"], header)
    print(f"results: {path}")


def _exact_match(bench: Bench, table: list[dict[str, Any]], results: dict, args) -> None:
    """EM on test rows for the baselines and the ``--exact-match`` best search rows (seed 0)."""
    from hub_merge.evaluate import load_task

    em = results["exact_match"]
    searches = sorted((r for r in table if "runs" in r), key=lambda r: task_mean(r["test"][0]))
    todo = table[:3] + searches[: args.exact_match]
    if all(r["key"] in em for r in todo):
        return
    test = {t: load_task(f) for t, f in bench.test_files.items()}
    scorer = ExactMatch(bench.base, test, args.device, args.em_limit)
    for r in todo:
        if r["key"] in em:
            continue
        if r["key"] == "oracle":
            scores = {
                t: scorer.score([bench.experts[e]], [t])[t] for t, e in r["oracle_of"].items()
            }
        elif "em_models" in r:
            scores = scorer.score([bench.experts[e] for e in r["em_models"]], bench.tasks)
        else:
            scores = scorer.score([r["runs"][0]["winner_path"]], bench.tasks)
        em[r["key"]] = scores
        print(f"exact match: {r['title']}: {task_mean(scores):.3f} {scores}", flush=True)


if __name__ == "__main__":
    main()
