"""Metric names and how per-task scores become one higher-is-better fitness.

Shared by the evaluator, the search (which combines cached scores) and cards (which recompute a
fitness from saved scores), so the rule lives in one place.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal, get_args

from ..errors import ConfigError

# "lm_eval": each lm-eval task's own primary metric (hub_merge.lmeval; higher is better).
Metric = Literal["answer_loss", "exact_match", "choice", "lm_eval"]
METRICS: tuple[str, ...] = get_args(Metric)
LOWER_IS_BETTER: frozenset[str] = frozenset({"answer_loss"})
COMBINES: tuple[str, ...] = ("mean", "harmonic")  # how per-task scores become one fitness


def fitness_from_scores(
    scores: Mapping[str, float],
    metric: str,
    weights: Mapping[str, float] | None = None,
    combine: str = "mean",
) -> float:
    """Higher-is-better fitness from per-task scores.

    ``combine="mean"``: the weighted mean, negated for a loss. ``combine="harmonic"``: the
    weighted harmonic mean, which Model Swarms uses for two tasks so that neither is given up for
    the other. It needs scores in (0, 1], so a loss enters as ``exp(−loss)`` (the answer tokens'
    geometric-mean probability); a task scoring 0 makes the fitness 0.
    """
    if not scores:
        raise ConfigError("No task scores to combine into a fitness.")
    if combine not in COMBINES:
        raise ConfigError(f"Unknown combine {combine!r}; choose one of {list(COMBINES)}.")
    w = {name: float((weights or {}).get(name, 1.0)) for name in scores}
    total = sum(w.values())
    if total <= 0:
        raise ConfigError(f"Task weights must sum to a positive number; got {dict(weights or {})}.")
    if combine == "harmonic":
        good = {
            n: math.exp(-float(s)) if metric in LOWER_IS_BETTER else float(s)
            for n, s in scores.items()
        }
        if any(v <= 0 for n, v in good.items() if w[n] > 0):
            return 0.0
        return total / sum(w[n] / v for n, v in good.items() if w[n] > 0)
    mean = sum(w[n] * float(s) for n, s in scores.items()) / total
    return -mean if metric in LOWER_IS_BETTER else mean


def lower_is_better(metric: str) -> bool:
    """Whether a raw per-task score of ``metric`` is better when lower (a loss)."""
    return metric in LOWER_IS_BETTER


def combined_score(fitness: float, metric: str, combine: str = "mean") -> float:
    """A fitness (higher is better) back in the metric's own units and direction.

    ``mean``: the weighted mean of the per-task scores (a loss is un-negated). ``harmonic`` on a
    loss: ``−ln`` of the harmonic mean of ``exp(−loss)``, a loss again (lower is better, equal to
    every task's loss when they agree); ``harmonic`` on a score: the harmonic mean itself.
    """
    if not lower_is_better(metric):
        return float(fitness)
    if combine == "harmonic":
        return -math.log(fitness) if fitness > 0 else math.inf
    return -float(fitness)


def combined_label(metric: str, combine: str = "mean", weighted: bool = False) -> str:
    """The column title of :func:`combined_score`: ``mean``, ``weighted mean``, ``harmonic``..."""
    name = "harmonic" if combine == "harmonic" else "mean"
    return f"weighted {name}" if weighted else name


def fitness_label(metric: str, combine: str = "mean") -> str:
    """What a fitness value is, for an axis or a column: ``-answer_loss``, ``harmonic of exp(-answer_loss)``."""
    if combine == "harmonic":
        return f"harmonic of exp(-{metric})" if lower_is_better(metric) else f"harmonic of {metric}"
    return f"-{metric}" if lower_is_better(metric) else metric
