"""One comparison: a run's winner against its baselines, per task and combined, dev and test.

Every place that shows "how good is the winner" (the card, ``hub-merge search``'s summary, the
Space's table, the demo) displays the rows :func:`compare` returns and computes nothing itself,
so they all print the same numbers. The task weights, the combine rule (``mean`` or
``harmonic``) and the direction of the metric (``LOWER_IS_BETTER``) are applied here, once.

Rows, in order: the subject(s) (the winner, or the node a card describes; one per run when
several runs on the same split are compared), each expert, the uniform average, and the oracle
router where it applies (two or more tasks: each task answered by the expert best at it on the
dev rows, the ceiling for any single merged model on experts with disjoint skills).

Plain data only (no torch), so the Space and card tools can import it cheaply.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import ConfigError
from .evaluate.fitness import (
    combined_label,
    combined_score,
    fitness_from_scores,
    fitness_label,
    lower_is_better,
)
from .lineage import FamilyTree, LineageNode

Role = Literal["winner", "node", "expert", "uniform", "oracle"]
ORACLE_ID = "oracle"  # the oracle router's row id (no node of the tree: no model was built)


def format_score(value: float | None) -> str:
    """A score as every display prints it: 4 significant digits, ``–`` when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.4g}"


@dataclass(frozen=True)
class ComparisonRow:
    """One model (or the oracle router) on the dev and test rows.

    ``dev``/``test``: raw per-task scores in the metric's units. ``*_combined``: the tasks
    combined with the run's weights and combine rule, in the same units and direction.
    ``*_fitness``: the same, as the higher-is-better number the search ranks by.
    """

    id: str
    role: Role
    subject: bool  # the model being compared (the winner, or the node a card describes)
    strategy: str | None
    dev: Mapping[str, float]
    test: Mapping[str, float]
    dev_combined: float | None
    test_combined: float | None
    dev_fitness: float | None
    test_fitness: float | None
    routes: Mapping[str, str] = field(default_factory=dict)  # oracle: task -> expert

    @property
    def label(self) -> str:
        """How displays name the row: the node id, ``oracle router``."""
        return "oracle router" if self.role == "oracle" else self.id

    def scores(self, split: str) -> Mapping[str, float]:
        return self.test if split == "test" else self.dev

    def combined(self, split: str) -> float | None:
        return self.test_combined if split == "test" else self.dev_combined

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "role": self.role,
            "subject": self.subject,
            "strategy": self.strategy,
            "dev": dict(self.dev),
            "test": dict(self.test),
            "dev_combined": self.dev_combined,
            "test_combined": self.test_combined,
            "dev_fitness": self.dev_fitness,
            "test_fitness": self.test_fitness,
            "routes": dict(self.routes),
        }


@dataclass(frozen=True)
class Comparison:
    """The rows of :func:`compare` and how they were combined (for titles and notes)."""

    metric: str
    combine: str
    weights: Mapping[str, float]
    tasks: Sequence[str]
    rows: Sequence[ComparisonRow]
    split_description: str | None = None

    @property
    def lower_is_better(self) -> bool:
        return lower_is_better(self.metric)

    @property
    def direction(self) -> str:
        """``lower`` or ``higher``: which way the per-task and combined scores are better."""
        return "lower" if self.lower_is_better else "higher"

    @property
    def has_test(self) -> bool:
        """Whether the subject was scored on held-out test rows."""
        return any(r.subject and r.test for r in self.rows)

    @property
    def split(self) -> str:
        """The rows displays report: ``test`` when the run has them, else ``dev``."""
        return "test" if self.has_test else "dev"

    @property
    def combined_label(self) -> str:
        """The combined column's title: ``mean``, ``weighted mean``, ``harmonic``..."""
        return combined_label(self.metric, self.combine, weighted=bool(self.weights))

    @property
    def fitness_label(self) -> str:
        return fitness_label(self.metric, self.combine)

    def subject(self) -> ComparisonRow:
        return next(r for r in self.rows if r.subject)

    def shown(self, split: str | None = None) -> list[ComparisonRow]:
        """The rows that have scores on ``split`` (default: :attr:`split`)."""
        split = split or self.split
        return [r for r in self.rows if r.scores(split)]

    def best(self, split: str | None = None) -> ComparisonRow | None:
        """The row with the best combined score on ``split`` (ties: the first)."""
        split = split or self.split
        scored = [r for r in self.rows if r.combined(split) is not None]
        if not scored:
            return None
        key = "test_fitness" if split == "test" else "dev_fitness"
        return max(scored, key=lambda r: getattr(r, key))

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "direction": self.direction,
            "combine": self.combine,
            "weights": dict(self.weights),
            "tasks": list(self.tasks),
            "split": self.split,
            "rows": [r.to_dict() for r in self.rows],
        }


def compare(runs: FamilyTree | Sequence[FamilyTree], node_id: str | None = None) -> Comparison:
    """The subject(s) against the baselines, per task and combined, on dev and test rows.

    Args:
        runs: one run's tree, or several runs on the same tasks, split and scoring rule (their
            winners are each a subject row; the first run's baselines are the baselines).
        node_id: with one run, the node to compare (default: its winner).

    Raises:
        ConfigError: an unknown node, or runs that were not scored alike.
    """
    trees = [runs] if isinstance(runs, FamilyTree) else list(runs)
    if not trees:
        raise ConfigError("Nothing to compare: give at least one run.")
    first = trees[0]
    weights, combine = first.scoring_rule()
    for other in trees[1:]:
        _check_alike(first, other)
    if node_id is not None and len(trees) > 1:
        raise ConfigError("node_id picks a node of one run; give one run with it.")
    tasks = list(first.tasks) or sorted({t for n in first.nodes.values() for t in n.scores})
    row = _RowMaker(first.score_metric, weights, combine)
    rows: list[ComparisonRow] = []
    for tree in trees:
        wanted = node_id or tree.winner
        if wanted is None or wanted not in tree.nodes:
            raise ConfigError(f"No node {wanted!r} in the run to compare.")
        node = tree.nodes[wanted]
        role: Role = "winner" if wanted == tree.winner else "node"
        rows.append(
            row.make(node.id, role, True, tree.strategy, node.scores, tree.test_scores.get(node.id))
        )
    subjects = {r.id for r in rows} if len(trees) == 1 else set()
    # every expert (runs from before baselines were marked have them too), then the average
    baselines = [*first.experts(), *(n for n in first.baselines() if n.kind != "expert")]
    for b in baselines:
        if b.id not in subjects:
            role = "expert" if b.kind == "expert" else "uniform"
            rows.append(row.make(b.id, role, False, None, b.scores, first.test_scores.get(b.id)))
    oracle = _oracle(first, tasks, row)
    if oracle is not None:
        rows.append(oracle)
    split = (first.split or {}).get("description")
    return Comparison(first.score_metric, combine, weights, tasks, rows, split)


@dataclass(frozen=True)
class _RowMaker:
    metric: str
    weights: Mapping[str, float]
    combine: str

    def fitness(self, scores: Mapping[str, float] | None) -> float | None:
        if not scores:
            return None
        return fitness_from_scores(scores, self.metric, self.weights or None, self.combine)

    def make(
        self,
        node_id: str,
        role: Role,
        subject: bool,
        strategy: str | None,
        dev: Mapping[str, float] | None,
        test: Mapping[str, float] | None,
        routes: Mapping[str, str] | None = None,
    ) -> ComparisonRow:
        dev_fit, test_fit = self.fitness(dev), self.fitness(test)
        return ComparisonRow(
            id=node_id,
            role=role,
            subject=subject,
            strategy=strategy,
            dev=dict(dev or {}),
            test=dict(test or {}),
            dev_combined=None
            if dev_fit is None
            else combined_score(dev_fit, self.metric, self.combine),
            test_combined=None
            if test_fit is None
            else combined_score(test_fit, self.metric, self.combine),
            dev_fitness=dev_fit,
            test_fitness=test_fit,
            routes=dict(routes or {}),
        )


def _oracle(tree: FamilyTree, tasks: list[str], row: _RowMaker) -> ComparisonRow | None:
    """Each task answered by the expert best at it on the dev rows (None for one task)."""
    experts: list[LineageNode] = [n for n in tree.experts() if n.scores]
    if len(tasks) < 2 or len(experts) < 2:
        return None
    sign = -1.0 if lower_is_better(tree.score_metric) else 1.0
    routes: dict[str, str] = {}
    for task in tasks:
        scored = [e for e in experts if task in e.scores]
        if not scored:
            return None
        routes[task] = max(scored, key=lambda e: sign * float(e.scores[task])).id
    dev = {t: tree.nodes[e].scores[t] for t, e in routes.items()}
    tests = [tree.test_scores.get(e) or {} for e in routes.values()]
    test = {t: s[t] for t, s in zip(routes, tests, strict=True) if t in s}
    return row.make(
        ORACLE_ID, "oracle", False, None, dev, test if len(test) == len(routes) else None, routes
    )


def _check_alike(first: FamilyTree, other: FamilyTree) -> None:
    """Runs compared in one table must share tasks, metric, split and scoring rule."""
    for what, a, b in (
        ("tasks", sorted(first.tasks), sorted(other.tasks)),
        ("metric", first.score_metric, other.score_metric),
        ("scoring rule", first.scoring_rule(), other.scoring_rule()),
        ("dev/test split", _split_key(first), _split_key(other)),
    ):
        if a != b:
            raise ConfigError(
                f"Runs differ in their {what} ({a} vs {b}); only runs on the same tasks, split "
                "and scoring rule can share one comparison."
            )


def _split_key(tree: FamilyTree) -> dict[str, Any]:
    return {k: v for k, v in (tree.split or {}).items() if k != "description"}
