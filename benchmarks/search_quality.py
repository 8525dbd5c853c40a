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
adds a row with :func:`search_row` (or any :class:`RowBuilder` in ``ROWS`` for rows that are not a
search, such as MoE or MoA, which return an :class:`Outcome` themselves).

    python benchmarks/search_quality.py --zoo smol --limit 16 --budget 60 --out /tmp/sq-smol
    python benchmarks/search_quality.py --zoo smol-wide --rows greedy,greedy-kinship --out /tmp/sq-w
    python benchmarks/search_quality.py --zoo tiny --limit 8 --budget 20 --seeds 1  # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# --- rows ---------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """One run of one row (one seed): its winner's per-task scores and what it cost."""

    dev: dict[str, float]  # the winner's dev scores (what the search optimised)
    test: dict[str, float]  # the winner's test scores (rows the search never read)
    evaluations: int  # candidates scored, baselines included
    seconds: float
    winner: str = ""
    winner_path: str | None = None  # materialised winner (for exact match)
    note: str = ""
    baselines: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RowBuilder:
    """One table row: how to run it for one seed, and whether the seed matters."""

    title: str
    run: Callable[[Bench, int], Outcome]
    stochastic: bool = False


ROWS: dict[str, RowBuilder] = {}


def register_row(key: str, builder: RowBuilder) -> RowBuilder:
    """Add a row to the table; later strategies (swarm, DAM, MoE, MoA) call this."""
    if key in ROWS:
        raise ValueError(f"row {key!r} is already registered")
    ROWS[key] = builder
    return builder


def search_row(
    key: str,
    title: str,
    strategy: str,
    settings: Callable[[Bench], dict[str, Any]],
    *,
    stochastic: bool = False,
    budget: bool = False,
    train: bool = False,
) -> RowBuilder:
    """Register a row that runs ``hub_merge.search.search`` with ``strategy`` and its settings.

    ``budget``: the run gets ``--budget`` evaluations (strategies that need a budget).
    ``train``: the run gets the zoo's training rows (``--train-tasks``; strategies that train).
    """

    def run(bench: Bench, seed: int) -> Outcome:
        values, limit = settings(bench), bench.budget if budget else None
        outcome = bench.search(key, strategy, values, seed=seed, budget=limit, train=train)
        outcome.extra.update(settings=values, budget=limit)
        return outcome

    return register_row(key, RowBuilder(title, run, stochastic))


search_row(
    "greedy",
    "vanilla greedy",
    "greedy",
    lambda b: {"generations": b.generations, "kinship_guided": False, "kinship_stop": None},
)
search_row(
    "greedy-kinship",
    "kinship greedy",
    "greedy",
    lambda b: {"generations": b.generations, "kinship_guided": True, "kinship_stop": 0.9},
)
search_row(  # not a default row: kinship greedy without its early stop, to see what the stop saves
    "greedy-kinship-nostop",
    "kinship greedy, no early stop",
    "greedy",
    lambda b: {"generations": b.generations, "kinship_guided": True, "kinship_stop": None},
)
search_row(
    "evolve",
    "evolve (global genes)",
    "evolve",
    lambda b: {"method": b.evolve_method},
    stochastic=True,
    budget=True,
)
search_row(
    "evolve-layers",
    "evolve (per layer group)",
    "evolve",
    lambda b: {"method": b.evolve_method, "layer_groups": b.layer_groups},
    stochastic=True,
    budget=True,
)
search_row(  # Model Swarms (Feng et al. 2024): the paper's PSO on mixing coefficients
    "swarm",
    "Model Swarms (dense space)",
    "swarm",
    lambda b: {"space": "dense"},
    stochastic=True,
    budget=True,
)
search_row(  # the paper's way for LoRA experts: A = Σα A_j, B = Σα B_j; the winner is an adapter
    "swarm-adapter",
    "Model Swarms (adapter space)",
    "swarm",
    lambda b: {"space": "adapter"},
    stochastic=True,
    budget=True,
)
search_row(  # DAM (Arcee 2024): trained, not searched; its cost is gradient steps (in the note)
    "dam",
    "DAM (trained coefficients)",
    "dam",
    lambda b: {
        "steps": b.dam_steps,
        "lr": 5e-3,
        "train_batch_size": 4,
        "max_rows": b.dam_rows,
    },
    train=True,
)
search_row(  # not in the paper: one more particle starting at the uniform average
    "swarm-uniform",
    "Model Swarms (dense, + uniform particle)",
    "swarm",
    lambda b: {"space": "dense", "population": len(b.experts) + 1, "uniform_particle": True},
    stochastic=True,
    budget=True,
)


def _alternative_row(key: str, title: str) -> RowBuilder:
    """MoE / MoA (issue 16): not one merged model; their inference cost is in the row's note."""

    def run(bench: Bench, seed: int) -> Outcome:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from moe_quality import search_quality_outcome

        return search_quality_outcome(bench, key, Outcome)

    return register_row(key, RowBuilder(title, run))


_alternative_row("moe-top1", "MoE assembly, top-1 routing (1 expert MLP per token)")
_alternative_row("moe-top2", "MoE assembly, top-2 routing (2 expert MLPs per token)")
_alternative_row("moa", "MoA: experts propose, base aggregates (exact match on test)")

DEFAULT_ROWS = ["greedy", "greedy-kinship", "evolve", "evolve-layers"]


# --- the bench: one zoo, one split, every run in one output folder ------------------------------


@dataclass
class Bench:
    base: str
    experts: dict[str, str]  # expert name -> folder
    expert_tasks: dict[str, str]  # expert name -> the task it was trained on
    task_files: dict[str, str]  # task name -> JSONL
    out: Path
    dev_files: dict[str, str]  # task name -> the dev rows the searches score (see write_split)
    test_files: dict[str, str]  # task name -> the held-out test rows
    budget: int
    generations: int
    evolve_method: str
    layer_groups: int
    device: str
    train_files: dict[str, str] = field(default_factory=dict)  # task -> training JSONL (DAM)
    dam_steps: int = 12
    dam_rows: int = 16

    @property
    def tasks(self) -> list[str]:
        return sorted(self.task_files)

    def _share_caches(self, run_dir: Path) -> None:
        _share_caches_into(self.out / "runs", run_dir)

    def search(
        self,
        key: str,
        strategy: str,
        settings: dict[str, Any],
        *,
        seed: int,
        budget: int | None,
        train: bool = False,
    ) -> Outcome:
        """One search through the public API, in its own run folder under ``out``."""
        from hub_merge.search import SearchConfig, search

        run_dir = self.out / "runs" / f"{key}-seed{seed}"
        resume = (run_dir / "state.json").is_file()
        if not resume:
            self._share_caches(run_dir)
        t0 = time.perf_counter()
        result = search(
            SearchConfig(
                base=self.base,
                experts=list(self.experts.values()),
                tasks=[self.dev_files[t] for t in self.tasks],
                test_tasks=[self.test_files[t] for t in self.tasks],
                out=str(run_dir),
                strategy=strategy,
                settings=settings,
                seed=seed,
                budget=budget,
                train_tasks=[self.train_files[t] for t in self.tasks if t in self.train_files]
                if train
                else [],
                device=self.device,
                materialize=["winner"],
                keep_models=2,  # the default fills free memory: several runs share one machine
                resume=resume,
                progress=False,
            )
        )
        seconds = time.perf_counter() - t0
        data = result.to_dict()
        by_folder = {str(Path(v).resolve()): k for k, v in self.experts.items()}
        baselines = {}
        for node in result.baselines():  # each expert and the uniform average, on dev and test
            if node.baseline == "uniform":
                name = "uniform"
            else:
                name = f"expert:{by_folder.get(str(Path(node.path or '').resolve()), node.name)}"
            baselines[name] = {"dev": node.scores, "test": result.tree.test_scores.get(node.id, {})}
        return Outcome(
            dev=data["scores"],
            test=data["test_scores"] or {},
            # candidates the run scored, whether computed now or found in the shared cache
            evaluations=sum(1 for n in result.tree.nodes.values() if n.fitness is not None),
            seconds=seconds,
            winner=data["winner"],
            winner_path=data.get("winner_path"),
            note=f"{data['winner']}: {data['stop_reason']}",
            baselines=baselines,
            extra={
                "generations": data["generations"],
                "computed": data["evaluations"],
                "summaries": _summaries(result),
            },
        )


def write_split(
    task_files: dict[str, str],
    out: Path,
    test_fraction: float,
    limit: int | None,
    test_limit: int | None,
) -> tuple[dict[str, str], dict[str, str]]:
    """Split each task once with the core's ``split_task`` (seed 0) into dev and test files.

    A search's own split is seeded by its run seed, so seeds 0, 1, 2 of a stochastic row would
    each be scored on other test rows. Every run here gets the same two files instead
    (``test_tasks``), so all rows and seeds share one test set. ``limit`` keeps the first dev rows
    (the fitness), ``test_limit`` the first test rows.
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


CACHES = ("scores.json", "test_scores.json", "kinship.json")


def _share_caches_into(runs: Path, run_dir: Path) -> None:
    """Seed a new run folder with the baselines' cached scores and kinships from earlier runs.

    Every run scores the same baselines (each expert and the uniform average) on the same dev and
    test rows first; cache keys cover the recipe, the models' content and the rows, so the shared
    entries are exactly what the run would compute. Only baseline entries are shared: a search's
    own candidates are computed in its own run, so its wall time is its own (the first run of a
    zoo also pays for the baselines). The evaluation count includes the baselines either way.
    """
    shared: dict[str, dict[str, Any]] = {name: {} for name in CACHES}
    for other in sorted(runs.glob("*/")) if runs.is_dir() else []:
        tree = other / "family_tree.json"
        if other == run_dir or not tree.is_file():
            continue
        nodes = json.loads(tree.read_text())["nodes"]
        nodes = nodes.values() if isinstance(nodes, dict) else nodes
        wanted = [n["scores"] for n in nodes if n.get("baseline")]
        caches = {n: json.loads((other / n).read_text()) for n in CACHES if (other / n).is_file()}
        keys = {k for k, v in caches.get("scores.json", {}).items() if v in wanted}
        shared["scores.json"].update({k: caches["scores.json"][k] for k in keys})
        tests = caches.get("test_scores.json", {})
        shared["test_scores.json"].update({k: v for k, v in tests.items() if k in keys})
        kin = caches.get("kinship.json", {})
        shared["kinship.json"].update(
            {k: v for k, v in kin.items() if all(part in keys for part in k.split("|"))}
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    for name, entries in shared.items():
        if entries:
            (run_dir / name).write_text(json.dumps(entries))


def _summaries(result: Any) -> list[dict[str, Any]]:
    """Per generation: best fitness and the top-k kinship (the greedy early stop reads it)."""
    out = []
    for g in result.tree.generations:
        out.append({"best_fitness": getattr(g, "best_fitness", None),
                    "top_kinship": getattr(g, "top_kinship", None)})  # fmt: skip
    return out


# --- exact match on test rows (generation; the searches score loss only) ------------------------


class ExactMatch:
    """Exact match of model folders on the test rows: one merge session, one evaluator per task."""

    def __init__(self, base: str, test_tasks: dict[str, Any], device: str, limit: int) -> None:
        from transformers import AutoTokenizer

        from hub_merge.evaluate import Evaluator
        from hub_merge.merge import MergeSession

        self.session = MergeSession(base, device=device)
        tok = AutoTokenizer.from_pretrained(base)
        self.evaluators = {
            name: Evaluator(
                [task], tok, metric="exact_match", device=self.session.device, limit=limit
            )  # fmt: skip
            for name, task in test_tasks.items()
        }

    def _model(self, folders: list[str]) -> Any:
        """The model of a folder, or the uniform linear average of several."""
        handles = [self.session.load(f) for f in folders]
        if len(handles) == 1 and handles[0].state is not None:
            state = handles[0].state
        elif len(handles) == 1:
            state = {k: handles[0].tensor(k, self.session.device) for k in self.session.names}
        else:
            state = self.session.merge("linear", handles, {"weight": 1.0})
        return self.session.to_model(state)

    def score(self, folders: list[str], tasks: list[str]) -> dict[str, float]:
        model = self._model(folders)
        return {t: self.evaluators[t].score(model)[t] for t in tasks}


# --- the table ----------------------------------------------------------------------------------


def _mean(scores: dict[str, float]) -> float:
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
    best = min(experts, key=lambda e: _mean(experts[e]["dev"]))
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
    uniform = _mean(table[1]["test"][0])
    oracle = _mean(table[2]["test"][0])
    print(header)
    print("test answer-token loss, lower is better; several seeds: mean ± std; EM: exact match")
    head = ["row", "seeds", "mean test loss", "vs uniform", "vs oracle", *bench.tasks, "EM test",
            "evals", "time s"]  # fmt: skip
    print("| " + " | ".join(head) + " |")
    print("| --- | " + " | ".join("---:" for _ in head[1:]) + " |")
    for r in table:
        means = [_mean(t) for t in r["test"]]
        # MoA is scored by exact match, not loss: its cells are EM, and a loss ratio means nothing
        em_row = any(x["extra"].get("metric") == "exact_match" for x in r.get("runs", []))
        cells = [
            r["title"],
            str(len(r["test"])) if "runs" in r else "-",
            ("EM " if em_row else "") + _fmt(means),
            "-" if em_row else f"{statistics.mean(means) / uniform:.3f}",
            "-" if em_row else f"{statistics.mean(means) / oracle:.3f}",
            *[_fmt([t[name] for t in r["test"]]) for name in bench.tasks],
            f"{_mean(em[r['key']]):.3f}" if r["key"] in em else "",
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


# --- main ---------------------------------------------------------------------------------------


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
                f"done: {builder.title} seed {seed}: mean test loss {_mean(outcome.test):.4f} "
                f"(dev {_mean(outcome.dev):.4f}), {outcome.evaluations} evaluations, "
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
    searches = sorted((r for r in table if "runs" in r), key=lambda r: _mean(r["test"][0]))
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
        print(f"exact match: {r['title']}: {_mean(scores):.3f} {scores}", flush=True)


if __name__ == "__main__":
    main()
