"""The leaderboard: one row per strategy (mean and spread over seeds) and per baseline.

Plain data (no torch): :class:`Leaderboard` is what ``hub-merge compare`` prints and writes
(``leaderboard.md``, ``leaderboard.json``, ``leaderboard.png``), what ``hub-merge push --row``
reads back, and what the card shows. Scores come from :func:`hub_merge.comparison.compare`
(weights, combine rule and direction applied there, once); this module only averages seeds,
picks the recommended row and displays.

The recommended row is chosen on **dev** scores, never on test scores: choosing by test would
leak the test rows into the choice, and the test score of the chosen row would no longer be an
honest estimate. Only rows that are one model of the base's size can be recommended (the
strategies' winners and the uniform average); the experts, the oracle router, MoE and MoA are
shown for comparison, each with its cost.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..comparison import format_score
from ..evaluate.fitness import combined_label, combined_score, fitness_from_scores
from ..evaluate.fitness import lower_is_better as _lower

Kind = Literal["strategy", "expert", "uniform", "oracle", "moe", "moa"]
BASELINE_KINDS = ("expert", "uniform", "oracle")
CHOSEN_ON = (
    "The recommended row is the one with the best combined {metric} on the dev rows (the rows "
    "the strategies read), never on the test rows: choosing by test would leak them. Only one "
    "model of the base's size can be recommended (a strategy's winner or the uniform average); "
    "where a strategy ran several seeds, its row is the mean and its published model the seed "
    "best on dev."
)


@dataclass(frozen=True)
class SeedResult:
    """One run of a row: its model's scores and what it cost."""

    seed: int | None
    dev: Mapping[str, float]
    test: Mapping[str, float]
    dev_fitness: float | None  # higher is better (the run's weights and combine rule)
    test_fitness: float | None
    exact_match: Mapping[str, float] = field(default_factory=dict)  # test rows
    evaluations: int = 0  # candidates the run scored (cached or not), baselines included
    train_steps: int = 0
    wall_s: float = 0.0
    run: str | None = None  # the run's subfolder of the compare folder
    node: str | None = None  # the model's node in that run
    model: str | None = None  # the model folder, relative to the compare folder

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SeedResult:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass(frozen=True)
class BoardRow:
    """A leaderboard row: a strategy over its seeds, a baseline, MoE or MoA."""

    name: str  # what ``--row`` names
    kind: Kind
    label: str
    seeds: Sequence[SeedResult]
    dev_rows: int = 0  # rows the row's method read (dev rows, training rows)
    train_rows: int = 0
    task_map: bool = False  # used the task-to-expert mapping
    params: int | None = None
    active_params: int | None = None
    calls_per_query: float | None = None
    note: str = ""

    @property
    def eligible(self) -> bool:
        """Whether the row can be recommended: one model of the base's size."""
        return self.kind in ("strategy", "uniform") and self.dev_fitness is not None

    @property
    def dev_fitness(self) -> float | None:
        return _mean([s.dev_fitness for s in self.seeds])

    @property
    def test_fitness(self) -> float | None:
        return _mean([s.test_fitness for s in self.seeds])

    def task_mean(self, split: str, task: str) -> float | None:
        return _mean([(s.test if split == "test" else s.dev).get(task) for s in self.seeds])

    def exact_match(self, task: str | None = None) -> float | None:
        """Test exact match of ``task``, or of all tasks (their mean), over the seeds."""
        if task is not None:
            return _mean([s.exact_match.get(task) for s in self.seeds])
        return _mean([_mean(list(s.exact_match.values())) for s in self.seeds])

    def best_seed(self) -> SeedResult:
        """The seed whose model ``push --row`` publishes: the best on dev (ties: the first)."""
        scored = [s for s in self.seeds if s.dev_fitness is not None]
        return max(scored, key=lambda s: s.dev_fitness) if scored else self.seeds[0]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "seeds": [asdict(s) for s in self.seeds]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BoardRow:
        kw = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        kw["seeds"] = [SeedResult.from_dict(s) for s in data.get("seeds", [])]
        return cls(**kw)


@dataclass(frozen=True)
class Leaderboard:
    """Every row on one split, with the rule that combines tasks and the recommended row."""

    metric: str
    combine: str
    weights: Mapping[str, float]
    tasks: Sequence[str]
    rows: Sequence[BoardRow]
    split_description: str | None = None
    evaluations_now: int = 0  # candidates scored by this call (0 on a finished resume)

    @property
    def lower_is_better(self) -> bool:
        return _lower(self.metric)

    @property
    def combined_label(self) -> str:
        return combined_label(self.metric, self.combine, weighted=bool(self.weights))

    def combined(self, fitness: float | None) -> float | None:
        """A fitness (higher is better) in the metric's units (a loss again)."""
        return None if fitness is None else combined_score(fitness, self.metric, self.combine)

    def fitness(self, scores: Mapping[str, float]) -> float | None:
        if not scores:
            return None
        return fitness_from_scores(scores, self.metric, self.weights or None, self.combine)

    def row(self, name: str) -> BoardRow:
        """The row ``--row`` names. Raises ConfigError naming the rows."""
        from ..errors import ConfigError

        for r in self.rows:
            if r.name == name:
                return r
        raise ConfigError(
            f"No row {name!r} in the leaderboard; rows are: {', '.join(r.name for r in self.rows)}."
        )

    def recommended(self) -> BoardRow | None:
        """The eligible row best on the DEV rows (never chosen by test scores)."""
        return _best([r for r in self.rows if r.eligible], "dev_fitness")

    def best_on_test(self) -> BoardRow | None:
        """The eligible row best on the test rows (shown; never used to choose)."""
        return _best([r for r in self.rows if r.eligible], "test_fitness")

    def disagreement(self) -> str | None:
        """A sentence when the row best on dev is not the row best on test, else None."""
        dev, test = self.recommended(), self.best_on_test()
        if dev is None or test is None or dev.name == test.name:
            return None
        return (
            f"{dev.label} is best on the dev rows but {test.label} is best on the test rows; the "
            f"recommendation stays {dev.label}, chosen on dev (choosing by test would leak it)."
        )

    def how_chosen(self) -> str:
        return CHOSEN_ON.format(metric=self.combined_label + " " + self.metric.replace("_", " "))

    # -- displays --------------------------------------------------------------------------

    def table(self) -> list[list[str]]:
        """Header and rows as strings: what the CLI prints and ``leaderboard.md`` holds."""
        rec, test_best = self.recommended(), self.best_on_test()
        spread_of = lambda r: _spread([self.combined(s.test_fitness) for s in r.seeds])  # noqa: E731
        head = ["row", f"test {self.combined_label}", *(f"test {t}" for t in self.tasks)]
        head += ["test EM", f"dev {self.combined_label}", "rows read (dev/train/task map)"]
        head += ["evals", "train steps", "wall s", "params (active)", "calls/query"]
        out = [head]
        for r in self.rows:
            marks = []
            if rec is not None and r.name == rec.name:
                marks.append("recommended (best on dev)")
            if test_best is not None and r.name == test_best.name and r is not rec:
                marks.append("best on test")
            name = r.name if r.label == r.name else f"{r.name} ({r.label})"
            name += f" [{'; '.join(marks)}]" if marks else ""
            test = format_score(self.combined(r.test_fitness))
            spread = spread_of(r)
            if spread is not None:
                test += f" ± {format_score(spread)}"
            seeds = len(r.seeds)
            if r.kind == "strategy" and seeds > 1:
                test += f" ({seeds} seeds)"
            reads = "–"
            if r.kind not in ("expert", "uniform"):
                reads = f"{r.dev_rows}/{r.train_rows}/{'yes' if r.task_map else 'no'}"
            cost = [
                _mean([s.evaluations for s in r.seeds]),
                _mean([s.train_steps for s in r.seeds]),
                _mean([s.wall_s for s in r.seeds]),
            ]
            if r.kind in BASELINE_KINDS:  # scored once, by the first run: its cost is there
                cost = [None, None, None]
            params = "–"
            if r.params is not None:
                params = _fmt_params(r.params)
                if r.active_params is not None and r.active_params != r.params:
                    params += f" ({_fmt_params(r.active_params)})"
            out.append(
                [
                    name,
                    test,
                    *(format_score(r.task_mean("test", t)) for t in self.tasks),
                    format_score(r.exact_match()),
                    format_score(self.combined(r.dev_fitness)),
                    reads,
                    _count(cost[0]),
                    _count(cost[1]),
                    _count(cost[2], 1),
                    params,
                    "–" if r.calls_per_query is None else f"{r.calls_per_query:g}",
                ]
            )
        return out

    def text(self) -> str:
        """The table as aligned text, with the notes (for the terminal)."""
        rows = self.table()
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
        return "\n".join([*lines, "", *self.notes()])

    def notes(self) -> list[str]:
        direction = "lower" if self.lower_is_better else "higher"
        out = [
            f"Scores: {self.metric} per task and {self.combined_label} of the tasks "
            f"({direction} is better); EM: exact match on the test rows.",
            self.how_chosen(),
        ]
        if self.split_description:
            out.append(f"Test rows: {self.split_description}.")
        if self.disagreement():
            out.append(self.disagreement())  # type: ignore[arg-type]
        return out

    def markdown(self) -> str:
        rows = self.table()
        head = "| " + " | ".join(rows[0]) + " |"
        rule = "|" + "|".join("---" for _ in rows[0]) + "|"
        body = ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in rows[1:]]
        return "\n".join([head, rule, *body, "", *self.notes()]) + "\n"

    def to_dict(self) -> dict[str, Any]:
        rec, best = self.recommended(), self.best_on_test()
        return {
            "metric": self.metric,
            "direction": "lower" if self.lower_is_better else "higher",
            "combine": self.combine,
            "weights": dict(self.weights),
            "tasks": list(self.tasks),
            "split_description": self.split_description,
            "recommended": rec.name if rec else None,
            "best_on_test": best.name if best else None,
            "how_chosen": self.how_chosen(),
            "evaluations_now": self.evaluations_now,
            "rows": [r.to_dict() for r in self.rows],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Leaderboard:
        return cls(
            metric=data["metric"],
            combine=data["combine"],
            weights=dict(data.get("weights") or {}),
            tasks=list(data["tasks"]),
            rows=[BoardRow.from_dict(r) for r in data["rows"]],
            split_description=data.get("split_description"),
            evaluations_now=int(data.get("evaluations_now") or 0),
        )

    def write(self, root: str | Path) -> None:
        """``leaderboard.md``, ``leaderboard.json`` and ``leaderboard.png``, each atomically."""
        from ..atomic import atomic_write, atomic_write_json

        root = Path(root)
        atomic_write(root / "leaderboard.md", self.markdown())
        atomic_write_json(root / "leaderboard.json", self.to_dict())
        try:
            self.plot(root / "leaderboard.png")
        except (OSError, ValueError) as err:  # a plot never costs the user the table
            import logging

            logging.getLogger(__name__).warning("leaderboard.png not written (%s).", err)

    def plot(self, path: str | Path) -> None:
        """Test score against wall time, one point per row; baselines as horizontal lines."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from ..atomic import atomic_path

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for i, r in enumerate(r for r in self.rows if r.kind in BASELINE_KINDS):
            value = self.combined(r.test_fitness)
            if value is not None:
                style = {"expert": ":", "uniform": "--", "oracle": "-."}[r.kind]
                ax.axhline(value, linestyle=style, color=f"C{i % 10}", alpha=0.7, label=r.label)
        for r in self.rows:
            value = self.combined(r.test_fitness)
            if r.kind in BASELINE_KINDS or value is None:
                continue
            x = max(_mean([s.wall_s for s in r.seeds]) or 0.0, 1e-2)
            ax.scatter([x], [value], s=40, zorder=3)
            ax.annotate(r.name, (x, value), textcoords="offset points", xytext=(4, 4))
        ax.set_xscale("log")
        ax.set_xlabel("cost: wall time of the row (s, log scale)")
        ax.set_ylabel(f"test {self.combined_label} {self.metric}")
        ax.set_title("Leaderboard: held-out score against cost")
        ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
        plt.close(fig)


def _mean(values: Sequence[float | None]) -> float | None:
    found = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return sum(found) / len(found) if found else None


def _spread(values: Sequence[float | None]) -> float | None:
    found = [float(v) for v in values if v is not None]
    return statistics.stdev(found) if len(found) > 1 else None


def _best(rows: Sequence[BoardRow], attr: str) -> BoardRow | None:
    scored = [r for r in rows if getattr(r, attr) is not None]
    return max(scored, key=lambda r: getattr(r, attr)) if scored else None


def _count(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}f}" if digits else f"{value:g}"


def _fmt_params(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"
