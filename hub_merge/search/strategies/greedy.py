"""Top-k greedy merging with kinship-guided exploration (Hu et al. 2024), as an ask/tell strategy.

The algorithm::

    pool = initial experts (scored by the core as baselines)
    generation 1: merge every pair of experts
    top = k fittest; previous_top = none
    while top != previous_top and generation < max:
        previous_top = top; snapshot = pool
        children = merge(a, b) for every pair in top not merged before        # exploitation
        if kinship-guided:                                                    # exploration
            best = fittest in top; far = argmin_{m in snapshot, m != best} kinship(m, best)
            children += merge(best, far) if not merged before
        pool += children; top = k fittest
        stop also on no improvement for `patience` generations, or when the mean pairwise
        kinship among the top crosses a threshold (0.9 for Pearson or cosine)

The pool is the experts and this strategy's own children; the uniform average the core scores
as a baseline stays a candidate for the winner but is not merged further, so the search is the
paper's. A kinship that could not be measured (NaN) is unknown: never the exploration partner.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ...errors import ConfigError
from ...merge.recipe import RANDOM_METHODS, MergeRecipe, ModelEntry
from ..strategy import Strategy, StrategyContext, register_strategy

# The paper's merge step: pairwise SLERP, fitter parent as mergekit's base, layer-wise t.
PAPER_SLERP_PARAMETERS: dict[str, Any] = {
    "t": [
        {"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
        {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]},
        {"value": 0.5},
    ]
}
# Defaults for other pairwise steps (mergekit names; per-input globals apply to both parents).
DEFAULT_PARAMETERS: dict[str, dict[str, Any]] = {
    "slerp": PAPER_SLERP_PARAMETERS,
    "linear": {"weight": 1.0},
    "task_arithmetic": {"weight": 0.5},
    "ties": {"weight": 1.0, "density": 0.5},
    "dare_ties": {"weight": 1.0, "density": 0.5},
    "dare_linear": {"weight": 0.5, "density": 0.5},
}
KINSHIP_STOP_DEFAULT = {"pearson": 0.9, "cosine": 0.9, "euclidean": None}
PAPER = "https://arxiv.org/abs/2410.12613"


def _help(text: str) -> Any:
    return {"help": text}


@dataclass
class GreedySettings:
    """Knobs of the greedy search (all but ``generations`` and ``patience`` are fingerprinted)."""

    k: int = field(default=3, metadata=_help("How many of the fittest models are merged pairwise."))
    generations: int = field(default=5, metadata=_help("Maximum generations."))
    method: str = field(
        default="slerp",
        metadata=_help(
            "Merge method of each pairwise step (default: the paper's layer-wise SLERP)."
        ),
    )
    parameters: dict[str, Any] | None = field(
        default=None,
        metadata=_help("Method parameters as JSON (default for slerp: the paper's t schedule)."),
    )
    parent_as_base: bool | None = field(
        default=None, metadata=_help("The fitter parent is mergekit's base (default: slerp only).")
    )
    kinship_guided: bool = field(
        default=True,
        metadata={
            "help": "Kinship-guided exploration; --no-kinship is vanilla greedy (and no kinship "
            "stop unless --kinship-stop is given).",
            "flag": "--kinship/--no-kinship",
        },
    )
    kinship_stop: float | str | None = field(
        default="auto",
        metadata=_help(
            "Stop when the mean kinship among the top-k crosses this (auto: 0.9 for pearson and "
            "cosine, none for euclidean)."
        ),
    )
    patience: int = field(
        default=2, metadata=_help("Stop after this many generations without improvement.")
    )

    def __post_init__(self) -> None:
        from ...merge.methods import get_method  # mergekit: imported only when a search runs

        get_method(self.method)  # an unknown method fails here, before anything is scored
        if self.parameters is None:
            self.parameters = json.loads(json.dumps(DEFAULT_PARAMETERS.get(self.method, {})))
        if not isinstance(self.parameters, dict):
            raise ConfigError('parameters must be a mapping, e.g. {"t": 0.5}.')
        if self.parent_as_base is None:
            self.parent_as_base = self.method == "slerp"
        if self.k < 2:
            raise ConfigError(
                f"k must be at least 2 (the top-k are merged pairwise); got {self.k}."
            )
        if self.generations < 1:
            raise ConfigError(f"generations must be at least 1; got {self.generations}.")
        if self.patience < 1:
            raise ConfigError(f"patience must be at least 1; got {self.patience}.")
        if isinstance(self.kinship_stop, str) and self.kinship_stop != "auto":
            try:
                self.kinship_stop = float(self.kinship_stop)
            except ValueError:
                raise ConfigError(
                    f"kinship_stop must be a number, 'auto' or none; got {self.kinship_stop!r}."
                ) from None
        if isinstance(self.kinship_stop, float) and math.isnan(self.kinship_stop):
            raise ConfigError("kinship_stop must be a number, not NaN.")

    def resolved_kinship_stop(self, kinship_metric: str) -> float | None:
        """The threshold in force: 'auto' depends on the metric (and on kinship guidance)."""
        if self.kinship_stop != "auto":
            return self.kinship_stop  # type: ignore[return-value]
        if not self.kinship_guided:
            return None
        return KINSHIP_STOP_DEFAULT[kinship_metric]


@dataclass
class _Member:
    recipe: MergeRecipe
    fitness: float
    order: int

    @property
    def key(self) -> str:
        return self.recipe.recipe_hash()


@register_strategy
class GreedyStrategy(Strategy):
    """The paper's top-k greedy merging; exploration by least kinship when kinship-guided."""

    name: ClassVar[str] = "greedy"
    settings_type: ClassVar[type] = GreedySettings
    title: ClassVar[str] = "Top-k greedy merging with kinship-guided exploration (Hu et al. 2024)"
    paper: ClassVar[str | None] = PAPER
    resumable: ClassVar[frozenset[str]] = frozenset({"generations", "patience"})
    records_parent_kinship: ClassVar[bool] = True

    def __init__(self, settings: GreedySettings, ctx: StrategyContext) -> None:
        super().__init__(settings, ctx)
        from ...merge.methods import get_method, validate_parameters

        s = settings
        as_base = bool(s.parent_as_base)
        validate_parameters(  # the method's contract, before anything is scored
            get_method(s.method),
            s.parameters or {},
            [{}] if as_base else [{}, {}],
            n_inputs=1 if as_base else 2,
            has_base=True,
            refuse_unused=True,
        )
        self.kinship_stop = s.resolved_kinship_stop(ctx.kinship_metric)
        if self.kinship_stop is not None and ctx.kinship is None:
            raise ConfigError("A kinship stop needs kinship, which this backend cannot measure.")
        if s.kinship_guided and ctx.kinship is None:
            raise ConfigError("Kinship-guided greedy needs kinship, which this backend lacks.")
        self.pool: list[_Member] = []
        self.merged: set[frozenset[str]] = set()
        self.generation = 0
        self.previous_top: list[str] | None = None
        self.best_so_far = -math.inf
        self.stale = 0
        self._reason: str | None = None
        self._note = ""
        self._summary: dict[str, Any] = {}

    @classmethod
    def population(cls, settings: GreedySettings, n_experts: int, n_layers: int) -> int:
        return n_experts * (n_experts - 1) // 2  # generation 1 merges every pair

    @classmethod
    def explain(cls) -> str:
        return (
            "**Top-k greedy merging with kinship** ([Hu et al. 2024](" + PAPER + ")). Generation "
            "1 merges every pair of experts; each later generation merges the k fittest models "
            "pairwise and, when kinship-guided, the fittest with its least related model in the "
            "pool (exploration). It stops when the top-k no longer changes, after `patience` "
            "generations without improvement, or when the kinship among the top crosses a "
            "threshold."
        )

    # -- pool --------------------------------------------------------------------------------

    def prepare(self) -> None:
        for i, baseline in enumerate(self.ctx.expert_baselines()):
            self.pool.append(_Member(baseline.recipe, baseline.fitness, i))

    def ranked(self) -> list[_Member]:
        """Pool members, fittest first; ties go to the member added first."""
        return sorted(self.pool, key=lambda m: (-m.fitness, m.order))

    def top(self) -> list[_Member]:
        return self.ranked()[: self.settings.k]

    def _closeness(self, value: float) -> float:
        """Kinship as 'higher = closer kin' (Euclidean is a distance)."""
        return -value if self.ctx.kinship_metric == "euclidean" else value

    def _top_kinship(self, top: list[_Member]) -> float | None:
        if len(top) < 2 or self.ctx.kinship is None:
            return None
        values: list[float] = []
        for i, a in enumerate(top[:-1]):
            values += self.ctx.kinship(a.recipe, [b.recipe for b in top[i + 1 :]])
        known = [v for v in values if not math.isnan(v)]
        return sum(known) / len(known) if known else None

    def _child(self, a: _Member, b: _Member, rank: dict[str, int]) -> MergeRecipe:
        # the fitter parent first (ties: the older); it is SLERP's base when parent_as_base
        first, second = (a, b) if rank[a.key] < rank[b.key] else (b, a)
        s = self.settings
        seed = self.ctx.seed if s.method in RANDOM_METHODS else None
        if s.parent_as_base:
            return MergeRecipe(
                method=s.method,
                base=first.recipe,
                models=[ModelEntry(model=second.recipe)],
                parameters=s.parameters,
                seed=seed,
            )
        return MergeRecipe(
            method=s.method,
            base=self.ctx.base,
            models=[ModelEntry(model=first.recipe), ModelEntry(model=second.recipe)],
            parameters=s.parameters,
            seed=seed,
        )

    # -- ask / tell --------------------------------------------------------------------------

    def ask(self) -> list[MergeRecipe]:
        if self._reason:
            return []
        ranked = self.ranked()
        if self.generation == 0:
            experts = sorted(self.pool, key=lambda m: m.order)
            pairs = list(itertools.combinations(experts, 2))
            self._note = "all pairs of experts"
        else:
            top = ranked[: self.settings.k]
            pairs = [
                (a, b)
                for a, b in itertools.combinations(top, 2)
                if frozenset((a.key, b.key)) not in self.merged
            ]
            self._note = "exploitation"
            if self.settings.kinship_guided:
                best = top[0]
                others = [m for m in ranked if m.key != best.key]
                values = self.ctx.kinship(best.recipe, [m.recipe for m in others])  # type: ignore[misc]
                known = [(m, v) for m, v in zip(others, values, strict=True) if not math.isnan(v)]
                if known:
                    far = min(known, key=lambda mv: (self._closeness(mv[1]), ranked.index(mv[0])))[
                        0
                    ]
                    pair = frozenset((best.key, far.key))
                    if pair not in self.merged and not any(
                        frozenset((x.key, y.key)) == pair for x, y in pairs
                    ):
                        pairs.append((best, far))
                        self._note = "exploitation + exploration"
                    else:
                        self._note = (
                            "exploitation (exploration partner already merged with the best)"
                        )
                else:
                    self._note = "exploitation (no kinship known for exploration)"
        if not pairs:
            self._reason = "no new pairs to merge"
            return []
        rank = {m.key: i for i, m in enumerate(ranked)}
        self.generation += 1
        for a, b in pairs:
            self.merged.add(frozenset((a.key, b.key)))
        return [self._child(a, b, rank) for a, b in pairs]

    def tell(self, recipes: list[MergeRecipe], fitness: list[float]) -> None:
        for recipe, value in zip(recipes, fitness, strict=True):
            self.pool.append(_Member(recipe, value, len(self.pool)))
        top = self.top()
        top_kinship = self._top_kinship(top)
        best = top[0].fitness
        self._summary = {
            "best": top[0].recipe,
            "best_fitness": best,
            "top": [m.recipe for m in top],
            "top_kinship": top_kinship,
            "note": self._note,
        }
        s = self.settings
        keys = [m.key for m in top]
        if self.generation == 1:
            self.best_so_far = best
        elif best > self.best_so_far + 1e-12:
            self.best_so_far, self.stale = best, 0
        else:
            self.stale += 1
        if self.previous_top is not None and keys == self.previous_top:
            self._reason = "top-k unchanged"
        elif self.stale >= s.patience:
            self._reason = f"no improvement for {s.patience} generations"
        elif (
            self.kinship_stop is not None
            and top_kinship is not None
            and self._closeness(top_kinship) > self._closeness(self.kinship_stop)
        ):
            self._reason = f"kinship among the top {top_kinship:.3f} crossed {self.kinship_stop}"
        elif self.generation >= s.generations:
            self._reason = "max generations reached"
        self.previous_top = keys

    def stop_reason(self) -> str | None:
        return self._reason

    def summary(self) -> dict[str, Any]:
        return dict(self._summary)
