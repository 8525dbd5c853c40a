"""The bench of ``search_quality.py``: one zoo, one dev/test split, every run in one folder.

:class:`Bench` runs one search through the public API and turns its result into an
:class:`Outcome`; :func:`write_split` gives every row and seed the same test rows; runs share the
baselines' cached scores; :class:`ExactMatch` scores model folders by generation on test rows.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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
    test rows first; cache keys cover the recipe, the models' content and the rows (issue 23:
    ``Scorer.key`` includes ``Evaluator.key``), so a shared entry is only ever found by a run on
    the same rows, and is exactly what that run would compute. Only baseline entries are shared: a search's
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
        # held-out scores are keyed by the test rows (their own key): share the baselines' by value
        data = json.loads(tree.read_text())
        baseline_ids = {n.get("id") for n in nodes if n.get("baseline")}
        wanted_test = [v for k, v in (data.get("test_scores") or {}).items() if k in baseline_ids]
        tests = caches.get("test_scores.json", {})
        shared["test_scores.json"].update({k: v for k, v in tests.items() if v in wanted_test})
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
