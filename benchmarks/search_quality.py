"""Quality of every search strategy on one zoo, scored on held-out TEST rows: ``hub-merge compare``.

Not a test. A thin wrapper over :func:`hub_merge.leaderboard.compare_strategies`: it picks a zoo's
base, experts and tasks, writes ONE dev/test split (the first ``--limit`` dev rows per task, the
first ``--test-limit`` test rows), and runs the compare on it: every strategy over ``--seeds``
seeds, the baselines (each expert, the uniform average, the oracle router) scored once, one score
cache, and optionally DAM on the zoo's training rows (``--train``: the row "dam + train rows"
beside DAM's own row on the dev rows), MoE and MoA. It prints the leaderboard with each row's
ratio to the uniform average and to the oracle router; ``OUT/leaderboard.{md,json,png}`` keep it.
A run that stops can be continued with the same command (it resumes ``--out``).

    python benchmarks/search_quality.py --zoo smol --limit 16 --budget 60 --seeds 3 \\
        --train --moe --moa --out /tmp/sq-smol
    python benchmarks/search_quality.py --zoo smol-wide --strategies greedy,evolve --out /tmp/sq-w
    python benchmarks/search_quality.py --zoo tiny --limit 8 --budget 20 --seeds 1 \\
        --dam-steps 3 --out /tmp/sq-tiny   # smoke run
    python benchmarks/search_quality.py --out /tmp/sq-smol --table   # print it, run nothing
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any


def _load_zoo(name: str) -> Any:
    from hub_merge import zoo as zoos

    builders = {
        "smol": zoos.build_smol_zoo,
        "smol-wide": zoos.build_smol_wide_zoo,
        "tiny": zoos.build_tiny_zoo,
    }
    return builders[name]()


def write_split(
    task_files: dict[str, str],
    out: Path,
    test_fraction: float,
    limit: int | None,
    test_limit: int | None,
) -> tuple[dict[str, str], dict[str, str]]:
    """Split each task once (``split_task``, seed 0) into a dev file and a test file.

    The compare would split the task files itself; the benchmark writes the two files so the dev
    rows (the fitness, ``limit``) and the test rows (``test_limit``, default all) are capped
    apart, as the published tables were measured.
    """
    from hub_merge.evaluate import load_task
    from hub_merge.splits import split_task

    dev_files, test_files = {}, {}
    for name, path in sorted(task_files.items()):
        dev, test = split_task(load_task(path), test_fraction, seed=0)
        for kind, task, keep, files in (
            ("dev", dev, limit, dev_files),
            ("test", test, test_limit, test_files),
        ):
            target = out / "split" / kind / f"{name}.jsonl"
            target.parent.mkdir(parents=True, exist_ok=True)
            rows = [{"prompt": ex.prompt, "answer": ex.answer} for ex in task.examples[:keep]]
            text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
            if not target.is_file() or target.read_text(encoding="utf-8") != text:
                target.write_text(text, encoding="utf-8")
            files[name] = str(target)
    return dev_files, test_files


def settings(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Each strategy's settings from the flags (only what the flags set; the rest: defaults)."""
    out: dict[str, dict[str, Any]] = {"greedy": {}, "evolve": {}, "dam": {}}
    if args.generations:
        out["greedy"]["generations"] = args.generations
    if args.evolve_method:
        out["evolve"]["method"] = args.evolve_method
    if args.layer_groups:
        out["evolve"]["layer_groups"] = args.layer_groups
    if args.dam_steps:
        out["dam"]["steps"] = args.dam_steps
    if args.dam_rows:
        out["dam"]["max_rows"] = args.dam_rows
    for name, extra in json.loads(args.settings or "{}").items():
        out.setdefault(name, {}).update(extra)
    return out


def ratios(board: Any) -> list[str]:
    """Each row's test score against the uniform average's and the oracle router's."""
    rows = {r.name: r for r in board.rows}
    lines = []
    uniform, oracle = (board.combined(rows[n].test_fitness) if n in rows else None
                       for n in ("uniform", "oracle"))  # fmt: skip
    for r in board.rows:
        value = board.combined(r.test_fitness)
        if value is None or not uniform or not oracle:
            continue
        lines.append(
            f"- {r.name}: {value / uniform:.3f} of uniform, {value / oracle:.3f} of oracle"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--zoo", choices=["smol", "smol-wide", "tiny"], default="smol")
    add("--strategies", default="greedy,evolve,swarm,dam", help="comma-separated strategies")
    add("--limit", type=int, default=16, help="dev rows per task the strategies read (fitness)")
    add("--test-limit", type=int, default=None, help="test rows per task (default: all)")
    add("--test-fraction", type=float, default=0.3, help="share of each task's rows held out")
    add("--budget", type=int, default=60, help="evaluations per evolve and swarm run")
    add(
        "--generations",
        type=int,
        default=None,
        help="greedy's maximum generations (default: its own)",
    )
    add("--evolve-method", default=None, help="evolve's merge method (default: its own, dare_ties)")
    add("--layer-groups", type=int, default=None, help="evolve's layer groups (default: its own)")
    add(
        "--settings",
        default=None,
        help='more settings as JSON, e.g. \'{"swarm": {"space": "dense"}}\'',
    )
    add("--seeds", type=int, default=3, help="seeds of each strategy")
    add("--first-seed", type=int, default=0, help="seeds first-seed ... first-seed + seeds - 1")
    add("--dam-steps", type=int, default=None, help="DAM's gradient steps (default: DAM's)")
    add(
        "--dam-rows",
        type=int,
        default=None,
        help="DAM's training prompts per expert (default: all)",
    )
    add("--train", action="store_true", help="add DAM on the zoo's training rows")
    add("--moe", action="store_true", help="add the MoE row")
    add("--moe-top-k", type=int, default=1)
    add("--moa", action="store_true", help="add the MoA row")
    add("--no-exact-match", action="store_true", help="skip exact match on the test rows")
    add("--device", default="auto")
    add("--out", default=None, help="the compare folder (reused: resumes)")
    add("--table", action="store_true", help="print the leaderboard of --out; run nothing")
    args = parser.parse_args()

    from hub_merge.leaderboard import CompareConfig, compare_strategies, load_leaderboard

    if args.table:
        if not args.out:
            parser.error("--table needs --out")
        board = load_leaderboard(Path(args.out) / "compare")
    else:
        zoo = _load_zoo(args.zoo)
        models = {**zoo.adapters} if args.zoo == "tiny" else {**zoo.adapters, **zoo.experts}
        out = Path(args.out or tempfile.mkdtemp(prefix="search-quality-"))
        out.mkdir(parents=True, exist_ok=True)
        task_files = {t: str(p) for t, p in zoo.tasks.items()}
        dev, test = write_split(task_files, out, args.test_fraction, args.limit, args.test_limit)
        tasks = sorted(task_files)
        strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
        board = compare_strategies(
            CompareConfig(
                base=str(zoo.base),
                experts=[str(models[n]) for n in sorted(models)],
                tasks=[dev[t] for t in tasks],
                test_tasks=[test[t] for t in tasks],
                train_tasks=[str(zoo.train[t]) for t in tasks] if args.train else [],
                out=str(out / "compare"),
                strategies=strategies,
                budget={s: args.budget for s in ("evolve", "swarm") if s in strategies},
                settings={
                    k: v
                    for k, v in settings(args).items()
                    if k in strategies or (k == "moa" and args.moa)
                },
                seeds=args.seeds,
                seed=args.first_seed,
                moe=args.moe,
                moe_top_k=args.moe_top_k,
                moa=args.moa,
                exact_match=not args.no_exact_match,
                device=args.device,
                keep_models=2,  # several runs may share one machine
                resume=(out / "compare" / "compare.json").is_file(),
            )
        )
        print(f"zoo={args.zoo} experts={len(models)} tasks={len(tasks)} dev rows/task<="
              f"{args.limit} test rows/task={args.test_limit or 'all'} seeds={args.seeds}")  # fmt: skip
    print(board.text())
    print("\n".join(ratios(board)))


if __name__ == "__main__":
    main()
