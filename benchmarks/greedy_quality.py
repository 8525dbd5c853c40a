"""Quality of merge strategies on a zoo: best expert, uniform merges, vanilla and kinship greedy.

Not a test: it prints a table (and writes JSON) of mean fitness, per-task answer-token loss,
evaluations used and wall time, with ratios of kinship-guided against vanilla greedy measured
in the same run.

    python benchmarks/greedy_quality.py                    # smol zoo (builds/caches it: minutes)
    python benchmarks/greedy_quality.py --zoo tiny --limit 16 --generations 3
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def _summarise(row: dict, evaluator) -> dict:
    """Add mean loss and fitness to a result row (idempotent), for the table and the JSON."""
    row["mean_loss"] = sum(row["scores"].values()) / len(row["scores"])
    row["fitness"] = evaluator.fitness(row["scores"])
    return row


def _progress(row: dict, evaluator) -> None:
    """One line per finished strategy, so a long CPU run shows partial results as it goes."""
    _summarise(row, evaluator)
    print(
        f"done: {row['strategy']}: mean loss {row['mean_loss']:.4f}, "
        f"{row['evaluations']} evaluations, {row['seconds']:.1f} s",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--zoo", choices=["smol", "tiny"], default="smol")
    parser.add_argument("--limit", type=int, default=32, help="examples per task")
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--patience", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=None, help="folder for run folders and results.json")
    args = parser.parse_args()

    import torch
    from transformers import AutoTokenizer

    from hub_merge import zoo as zoos
    from hub_merge.evaluate import Evaluator, load_tasks
    from hub_merge.merge import MergeSession
    from hub_merge.search import SearchConfig, greedy_search

    zoo = zoos.build_smol_zoo() if args.zoo == "smol" else zoos.build_tiny_zoo()
    experts = zoo.experts or zoo.adapters
    names = sorted(n for n in experts if n in zoo.tasks)
    out = Path(args.out or tempfile.mkdtemp(prefix="greedy-quality-"))
    out.mkdir(parents=True, exist_ok=True)
    tasks = load_tasks([zoo.tasks[n] for n in names], limit=args.limit)
    rows: list[dict] = []

    # --- baselines: each expert alone, and uniform merges of all experts ------------------------
    t0 = time.perf_counter()
    session = MergeSession(zoo.base, device=args.device)
    evaluator = Evaluator(tasks, AutoTokenizer.from_pretrained(zoo.base), device=session.device)
    handles = {n: session.load(experts[n]) for n in names}

    def score(state: dict) -> dict[str, float]:
        return evaluator.score(session.to_model(state))  # noqa: F821 (session is alive here)

    expert_scores = {}
    for n in names:
        h = handles[n]
        state = (
            h.state
            if h.state is not None
            else {k: h.tensor(k, session.device) for k in session.names}
        )
        expert_scores[n] = score(state)
    best = max(names, key=lambda n: evaluator.fitness(expert_scores[n]))
    rows.append(
        {
            "strategy": f"best single expert ({best})",
            "scores": expert_scores[best],
            "evaluations": len(names),
            "seconds": time.perf_counter() - t0,
        }
    )
    _progress(rows[-1], evaluator)
    for method, params in (("linear", {"weight": 1.0}), ("ties", {"weight": 1.0, "density": 0.5})):
        t0 = time.perf_counter()
        merged = session.merge(method, list(handles.values()), params, seed=0)
        rows.append(
            {
                "strategy": f"uniform {method} of all experts",
                "scores": score(merged),
                "evaluations": 1,
                "seconds": time.perf_counter() - t0,
            }
        )
        _progress(rows[-1], evaluator)
        del merged
    del handles, session
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

    # --- the two greedy searches, each with its own run folder and cache ------------------------
    for label, guided in (("vanilla greedy", False), ("kinship-guided greedy", True)):
        t0 = time.perf_counter()
        result = greedy_search(
            SearchConfig(
                base=str(zoo.base),
                experts=[str(experts[n]) for n in names],
                tasks=[str(zoo.tasks[n]) for n in names],
                out=str(out / label.replace(" ", "-")),
                settings={
                    "k": args.k,
                    "generations": args.generations,
                    "patience": args.patience,
                    "kinship_guided": guided,
                    "kinship_stop": 0.9 if guided else None,
                },
                limit=args.limit,
                device=args.device,
                materialize=[],
            )
        )
        node = result.winner_node
        rows.append(
            {
                "strategy": f"{label} ({node.id}, {result.stop_reason})",
                "scores": node.scores,
                "evaluations": result.evaluations,
                "seconds": time.perf_counter() - t0,
                "generations": result.generations,
                "top_kinship": [g.top_kinship for g in result.tree.generations],
            }
        )
        _progress(rows[-1], evaluator)

    for row in rows:
        _summarise(row, evaluator)
    width = max(len(r["strategy"]) for r in rows)
    best_loss = rows[0]["mean_loss"]
    print(
        f"zoo={args.zoo} tasks={names} limit={args.limit} k={args.k} "
        f"generations<={args.generations} device={evaluator.device}"
    )
    print(
        "scores: answer-token loss per task, lower is better; 'vs best' = mean loss / best expert's"
    )
    print(
        f"{'strategy':<{width}}  {'mean loss':>9}  {'vs best':>7}  "
        + "  ".join(f"{n:>10}" for n in names)
        + "  evals   time s"
    )
    for r in rows:
        r["vs_best_expert"] = r["mean_loss"] / best_loss
        print(
            f"{r['strategy']:<{width}}  {r['mean_loss']:>9.4f}  {r['vs_best_expert']:>7.3f}  "
            + "  ".join(f"{r['scores'][n]:>10.4f}" for n in names)
            + f"  {r['evaluations']:>5}  {r['seconds']:>7.1f}"
        )
    vanilla, guided = rows[-2], rows[-1]
    print(
        f"kinship-guided / vanilla: mean loss x{guided['mean_loss'] / vanilla['mean_loss']:.3f}, "
        f"evaluations x{guided['evaluations'] / max(vanilla['evaluations'], 1):.2f}, "
        f"time x{guided['seconds'] / vanilla['seconds']:.2f}"
    )
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    print(f"results: {out / 'results.json'}")


if __name__ == "__main__":
    main()
