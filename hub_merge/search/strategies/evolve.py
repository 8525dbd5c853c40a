"""``--strategy evolve``: evolutionary merging in parameter space (Akiba et al. 2024) with CMA-ES.

Each candidate is ONE merge of every expert over the common base (DARE-TIES by default, as
Akiba et al. and mergekit-evolve's usual genome; TIES, task arithmetic, linear, DELLA or
breadcrumbs on request). Its genes are per expert and per contiguous block of layers (by default
one block per 4 layers, at most 8 blocks: Akiba et al. use per-layer genes, mergekit-evolve a
``layer_granularity``) a weight, mapped into ``[weight_min, weight_max]``, and for sparsifying
methods a density, mapped into ``[density_min, 1]``. CMA-ES (the ``cma`` package: the optimiser
is not ours) searches the genes:

- x0 = mergekit-evolve's: the genes of the uniform merge (each weight 1/N, density 1: every
  delta kept), σ0 = 1/6. Chosen over the box's centre 0.5 (an earlier spec) because the search
  then starts at a merge the run has already scored as its baseline, and a mergekit-evolve user
  gets the start they know; at 0.5, task arithmetic would start at N/2 times the mean task vector;
- population 4 + ⌊3 ln n⌋ for n genes (CMA-ES's default, as in the paper);
- ``bounds="clip"`` (default): genes bounded to [0, 1] by ``cma``'s own bound handling;
  ``bounds="abs"``: mergekit-evolve's handling, genes unbounded and read through abs() (weights
  uncapped above, densities capped at 1);
- every random draw from the run seed: CMA's samples through a private generator (so nothing
  else that draws from numpy can shift them) and the DARE/DELLA masks through the recipe seed.
  A resumed run therefore asks the same recipes and finds every score in the cache.

A layer group's genes reach the merge as mergekit ``filter`` conditions (one per layer, the
substring that names it); tensors outside the layers (embeddings, final norm, head) take the
mean of the groups' values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ...errors import ConfigError
from ...merge.recipe import RANDOM_METHODS, Condition, MergeRecipe, ModelEntry
from ..strategy import Strategy, StrategyContext, register_strategy

PAPER = "https://arxiv.org/abs/2403.13187"
METHODS = ("ties", "dare_ties", "task_arithmetic", "linear", "della", "breadcrumbs")
BOUNDS = ("clip", "abs")
LAYERS_PER_GROUP = 4  # default: one group of genes per 4 layers ...
MAX_GROUPS = 8  # ... and at most 8 groups (64 genes for 4 experts)
WEIGHT_ONLY = frozenset({"task_arithmetic", "linear"})
DIGITS = 6  # genes are rounded in recipes (readable, and exact on replay: the samples are seeded)


def _help(text: str) -> Any:
    return {"help": text}


@dataclass
class EvolveSettings:
    """Settings of the CMA-ES search (all but ``generations`` are fingerprinted)."""

    method: str = field(
        default="dare_ties",
        metadata=_help(
            f"Merge method of every candidate: {', '.join(METHODS)} (default dare_ties, as "
            "Akiba et al.)."
        ),
    )
    layer_groups: int | None = field(
        default=None,
        metadata=_help(
            "Genes per contiguous block of layers: 1 = global genes, G = G blocks; default: one "
            f"block per {LAYERS_PER_GROUP} layers, at most {MAX_GROUPS}."
        ),
    )
    bounds: str = field(
        default="clip",
        metadata=_help(
            "clip: genes kept in [0, 1] by CMA-ES's bound handling; abs: mergekit-evolve's "
            "(unbounded genes read through abs(), weights uncapped, densities capped at 1)."
        ),
    )
    weight_min: float = field(default=0.0, metadata=_help("Weight of an expert at gene 0."))
    weight_max: float = field(default=1.0, metadata=_help("Weight of an expert at gene 1."))
    density_min: float = field(
        default=0.1, metadata=_help("Density (share of each delta kept) at gene 0; gene 1 = 1.")
    )
    sigma0: float = field(default=1 / 6, metadata=_help("CMA-ES initial step size in gene units."))
    population: int | None = field(
        default=None, metadata=_help("Candidates per generation (default: 4 + floor(3 ln genes)).")
    )
    generations: int = field(
        default=30, metadata=_help("Maximum generations (a --budget usually stops it first).")
    )

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(
                f"evolve's method must be one of {', '.join(METHODS)}; got {self.method!r}."
            )
        if self.layer_groups is not None and self.layer_groups < 1:
            raise ConfigError(f"layer_groups must be at least 1; got {self.layer_groups}.")
        if self.bounds not in BOUNDS:
            raise ConfigError(f"bounds must be one of {', '.join(BOUNDS)}; got {self.bounds!r}.")
        if not self.weight_max > self.weight_min:
            raise ConfigError(
                f"weight_max ({self.weight_max}) must be above weight_min ({self.weight_min})."
            )
        if not 0.0 < self.density_min < 1.0:
            raise ConfigError(f"density_min must be in (0, 1); got {self.density_min}.")
        if not 0.0 < self.sigma0 <= 1.0:
            raise ConfigError(f"sigma0 must be in (0, 1]; got {self.sigma0}.")
        if self.population is not None and self.population < 2:
            raise ConfigError(f"population must be at least 2; got {self.population}.")
        if self.generations < 1:
            raise ConfigError(f"generations must be at least 1; got {self.generations}.")

    def genes_per_expert(self) -> int:
        return 1 if self.method in WEIGHT_ONLY else 2

    def groups(self, n_layers: int) -> int:
        """Layer groups: as set, else one per 4 layers, at most 8 (1 when layers are unknown)."""
        if self.layer_groups is not None:
            return self.layer_groups
        return max(1, min(MAX_GROUPS, math.ceil(n_layers / LAYERS_PER_GROUP)))

    def n_genes(self, n_experts: int, n_layers: int = 0) -> int:
        return self.groups(n_layers) * n_experts * self.genes_per_expert()

    def popsize(self, n_experts: int, n_layers: int = 0) -> int:
        n = self.n_genes(n_experts, n_layers)
        return self.population or 4 + math.floor(3 * math.log(n))


@register_strategy
class EvolveStrategy(Strategy):
    """CMA-ES over per-expert (per-layer-group) weights and densities of one N-way merge."""

    name: ClassVar[str] = "evolve"
    settings_type: ClassVar[type] = EvolveSettings
    title: ClassVar[str] = "Evolutionary merging with CMA-ES (Akiba et al. 2024)"
    paper: ClassVar[str | None] = PAPER
    resumable: ClassVar[frozenset[str]] = frozenset({"generations"})

    def __init__(self, settings: EvolveSettings, ctx: StrategyContext) -> None:
        super().__init__(settings, ctx)
        s = settings
        n = len(ctx.experts)
        self.n_layers = len(ctx.layers)
        self.n_groups = s.groups(self.n_layers)
        if self.n_groups > 1 and self.n_groups > self.n_layers:
            raise ConfigError(
                f"--layer-groups {self.n_groups} is more than the model's {self.n_layers} layers."
            )
        self.groups = [
            [i for i in range(self.n_layers) if i * self.n_groups // self.n_layers == g]
            for g in range(self.n_groups)
        ]
        self.dim = s.n_genes(n, self.n_layers)
        self.lam = s.popsize(n, self.n_layers)
        # x0: mergekit-evolve's (weight 1/N, density 1), the uniform merge's genes
        uniform = (1.0 / n - s.weight_min) / (s.weight_max - s.weight_min)
        self.x0_clipped = not 0.0 <= uniform <= 1.0
        per_expert = [min(1.0, max(0.0, uniform))] + ([1.0] if s.genes_per_expert() == 2 else [])
        self.x0 = per_expert * (n * self.n_groups)
        self.es: Any = None
        self.generation = 0
        self.pending: list[Any] = []
        self.best: tuple[float, MergeRecipe] | None = None
        self._summary: dict[str, Any] = {}
        self._reason: str | None = None

    @classmethod
    def population(cls, settings: EvolveSettings, n_experts: int, n_layers: int) -> int:
        return settings.popsize(n_experts, n_layers)

    @classmethod
    def explain(cls) -> str:
        return (
            "**Evolutionary merging** ([Akiba et al. 2024](" + PAPER + ")), parameter space. "
            "Every candidate merges all experts at once over the base (DARE-TIES by default, "
            "as in the paper); CMA-ES searches each expert's weight and density per block of "
            "layers, starting from the uniform merge (mergekit-evolve's start), and keeps the "
            "fittest merge on the dev rows. The DARE seed is fixed per run, so each "
            "candidate's score is deterministic."
        )

    # -- genes -> recipe ---------------------------------------------------------------------

    def _value(self, gene: float, lo: float, hi: float, *, cap: bool = True) -> float:
        """A gene mapped into ``[lo, hi]``: clipped to [0, 1], or (``abs``) through abs().

        With ``bounds="abs"`` a weight gene is uncapped above (``cap=False``), as
        mergekit-evolve reads it; a density is always capped at 1.
        """
        g = float(gene)
        if self.settings.bounds == "abs":
            g = abs(g) if not cap else min(1.0, abs(g))
        else:
            g = min(1.0, max(0.0, g))
        return round(lo + g * (hi - lo), DIGITS)

    def _setting(self, values: list[float]) -> Any:
        """One value per layer group as a mergekit setting (a scalar when global)."""
        if len(values) == 1:
            return values[0]
        conditions = [
            Condition(filter=self.ctx.layers[i], value=values[g])
            for g, layers in enumerate(self.groups)
            for i in layers
        ]
        return [*conditions, Condition(value=round(sum(values) / len(values), DIGITS))]

    def recipe(self, genes: Any) -> MergeRecipe:
        """The merge a gene vector stands for (its mapped genes are the models' parameters)."""
        s = self.settings
        k = s.genes_per_expert()
        n = len(self.ctx.experts)
        models = []
        for j, expert in enumerate(self.ctx.experts):
            weights, densities = [], []
            for g in range(self.n_groups):
                at = (g * n + j) * k
                weights.append(self._value(genes[at], s.weight_min, s.weight_max, cap=False))
                if k == 2:
                    densities.append(self._value(genes[at + 1], s.density_min, 1.0))
            params: dict[str, Any] = {"weight": self._setting(weights)}
            if k == 2:
                params["density"] = self._setting(densities)
            models.append(ModelEntry(model=expert.source, parameters=params))
        return MergeRecipe(
            method=s.method,
            base=None if s.method == "linear" else self.ctx.base,
            models=models,
            seed=self.ctx.seed if s.method in RANDOM_METHODS else None,
        )

    # -- ask / tell --------------------------------------------------------------------------

    def prepare(self) -> None:
        import cma
        import numpy as np

        rng = np.random.RandomState(self.ctx.seed + 12345)  # CMA's own draws, nobody else's
        self.es = cma.CMAEvolutionStrategy(
            self.x0,
            self.settings.sigma0,
            {
                "popsize": self.lam,
                "bounds": [0.0, 1.0] if self.settings.bounds == "clip" else [None, None],
                "seed": self.ctx.seed + 1,  # 0 would mean "from the clock" to cma
                "randn": lambda lam, dim: rng.standard_normal((lam, dim)),
                "verbose": -9,
                "verb_log": 0,
                "verb_disp": 0,
            },
        )
        if self.best is None and "uniform" in self.ctx.baselines:
            uniform = self.ctx.baselines["uniform"]
            self.best = (uniform.fitness, uniform.recipe)

    def ask(self) -> list[MergeRecipe]:
        if self._reason:
            return []
        self.pending = self.es.ask()
        self.generation += 1
        return [self.recipe(x) for x in self.pending]

    def tell(self, recipes: list[MergeRecipe], fitness: list[float]) -> None:
        import numpy as np

        worst = min((f for f in fitness if math.isfinite(f)), default=0.0) - 1.0
        clean = [f if math.isfinite(f) else worst for f in fitness]
        self.es.tell(self.pending, [-f for f in clean])  # cma minimises; fitness is higher-better
        order = sorted(range(len(clean)), key=lambda i: -clean[i])
        top = order[0]
        if self.best is None or clean[top] > self.best[0]:
            self.best = (clean[top], recipes[top])
        values = np.asarray(clean)
        self._summary = {
            "best": self.best[1],
            "best_fitness": self.best[0],
            "top": [recipes[i] for i in order[:3]],
            "note": f"CMA-ES generation {self.generation} (sigma {self.es.sigma:.3g})",
            "mean": float(values.mean()),
            "std": float(values.std()),
            "min": float(values.min()),
            "max": float(values.max()),
            "sigma": float(self.es.sigma),
            "genes": [round(float(g), DIGITS) for g in self.es.result.xfavorite],
        }
        stop = {k: v for k, v in self.es.stop().items() if k not in ("callback",)}
        if stop:
            self._reason = "CMA-ES stopped: " + ", ".join(sorted(stop))
        elif self.generation >= self.settings.generations:
            self._reason = "max generations reached"

    def stop_reason(self) -> str | None:
        return self._reason

    def summary(self) -> dict[str, Any]:
        return dict(self._summary)
