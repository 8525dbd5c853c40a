"""``--strategy swarm``: Model Swarms (Feng et al. 2024) as an ask/tell strategy.

The swarm itself (:class:`~hub_merge.search.pso.ParticleSwarm`) runs on coefficient vectors α;
this module turns each particle into the recipe of its position and reports each step to the
core. No I/O: the adapter-space checks that need the adapters' files go through the merge layer
(:func:`~hub_merge.merge.adapter_mix.check_factor_inputs`) with the core's resolved folders.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from ...errors import ConfigError
from ...merge.recipe import MergeRecipe
from ..pso import ParticleSwarm, SwarmSettings, position_recipe
from ..strategy import Strategy, StrategyContext, register_strategy

PAPER = "https://arxiv.org/abs/2410.11163"


@register_strategy
class SwarmStrategy(Strategy):
    """Particles start at the experts and move by the paper's PSO rule; one step per generation."""

    name: ClassVar[str] = "swarm"
    settings_type: ClassVar[type] = SwarmSettings
    title: ClassVar[str] = "Model Swarms: particle swarm over the experts' mixing coefficients"
    paper: ClassVar[str | None] = PAPER
    # Only when to stop: the draws, and so every position before the stop, do not depend on it.
    resumable: ClassVar[frozenset[str]] = frozenset({"patience", "max_steps"})

    def __init__(self, settings: SwarmSettings, ctx: StrategyContext) -> None:
        super().__init__(settings, ctx)
        settings.validate(len(ctx.experts))
        self.space = self._resolve_space(settings.space, ctx)
        if self.space == "adapter":
            full = [e.name for e in ctx.experts if not e.is_adapter]
            if full:
                raise ConfigError(
                    f"Adapter space mixes LoRA factors, but {', '.join(full)} "
                    f"{'is a full model' if len(full) == 1 else 'are full models'}: use "
                    "--space dense (task vectors), which takes full models and adapters."
                )
            workspace = ctx.workspace
            if workspace is not None and getattr(workspace, "expert_folders", None):
                from ...merge.adapter_mix import check_factor_inputs

                check_factor_inputs(
                    [workspace.expert_folders[e.name] for e in ctx.experts],
                    labels=[e.name for e in ctx.experts],
                )
        self.sources = [e.source for e in ctx.experts]
        self.swarm = ParticleSwarm(len(ctx.experts), settings, seed=ctx.seed)

    @staticmethod
    def _resolve_space(space: str, ctx: StrategyContext) -> str:
        """``auto``: the paper's adapter space when every expert is a LoRA adapter of one rank.

        Adapters of different ranks cannot be mixed factor by factor (A = Σ α A_j needs one
        shape), so they, and any full model, take dense space.
        """
        if space != "auto":
            return space
        if not all(e.is_adapter for e in ctx.experts):
            return "dense"
        workspace = ctx.workspace
        if workspace is not None and getattr(workspace, "expert_folders", None):
            from ...errors import IncompatibleModelsError
            from ...merge.adapter_mix import check_factor_inputs

            try:
                check_factor_inputs(
                    [workspace.expert_folders[e.name] for e in ctx.experts],
                    labels=[e.name for e in ctx.experts],
                )
            except IncompatibleModelsError:
                return "dense"
        return "adapter"

    @classmethod
    def population(cls, settings: SwarmSettings, n_experts: int, n_layers: int) -> int:
        return settings.population or n_experts

    def recipe(self, alpha: np.ndarray | list[float]) -> MergeRecipe:
        """The candidate at ``alpha``; an expert's own position is the expert (its baseline)."""
        a = np.asarray(alpha, dtype=np.float64)
        hot = np.flatnonzero(a != 0.0)
        if len(hot) == 1 and a[hot[0]] == 1.0:
            return self.ctx.experts[int(hot[0])].recipe
        uniform = self.ctx.baselines.get("uniform")
        if self.space == "dense" and uniform is not None and np.all(a == 1.0 / len(a)):
            # base + Σ τ_j / N is the linear average: the uniform baseline, already scored
            return uniform.recipe
        return position_recipe(self.space, self.ctx.base, self.sources, a)

    def ask(self) -> list[MergeRecipe]:
        positions = self.swarm.ask()
        if positions is None:
            return []
        return [self.recipe(a) for a in positions]

    def tell(self, recipes: list[MergeRecipe], fitness: list[float]) -> None:
        self.swarm.tell(fitness)

    def stop_reason(self) -> str | None:
        return self.swarm.stop_reason()

    def summary(self) -> dict[str, Any]:
        """This step: the global best (a lineage node, its α in its recipe), spread and α."""
        s = self.swarm
        if not s.history or s.g is None:
            return {}
        h = s.history[-1]
        f = np.asarray(h["fitness"], dtype=np.float64)
        finite = f[np.isfinite(f)]
        best = self.recipe(s.g)
        return {
            "best": best,
            "best_fitness": s.g_fit,
            "top": [best],
            "note": (
                f"step {h['step']}: λ {h['step_length']:.3g}, spread {h['spread']:.3g}"
                + (", new global best" if h["new_best"] else "")
                + (f", {s.restarts} restarts so far" if s.restarts else "")
            ),
            "mean": float(finite.mean()) if finite.size else None,
            "std": float(finite.std()) if finite.size else None,
            "min": float(finite.min()) if finite.size else None,
            "max": float(finite.max()) if finite.size else None,
            "spread": h["spread"],
            "alpha": h["global_best_alpha"],
            "mean_alpha": h["mean_alpha"],
            "alpha_names": [e.name for e in self.ctx.experts],
            "step_length": h["step_length"],
            "restarts": s.restarts,
            "space": self.space,
        }

    @classmethod
    def explain(cls) -> str:
        return (
            "This model was found by **Model Swarms** "
            f"([Feng et al. 2024]({PAPER})): a particle swarm whose particles start at the "
            "experts and move through weight space, each step pulled towards its own best "
            "position, the swarm's global best, and away from the global worst, with random "
            "weights drawn per step and a step length decaying ×0.95 to 0.1. Every position is an "
            "affine combination of the experts, so hub-merge runs the swarm on each particle's "
            "mixing coefficients α (Σα = 1) and the winner is exactly `Σ α_j · expert_j`: in "
            "dense space the task-arithmetic merge with weights α, in adapter space (the "
            "paper's, and the default when every expert is a LoRA adapter) the LoRA "
            "adapter with A = Σ α_j A_j and B = Σ α_j B_j. The winner's α is in its recipe; "
            "coefficients may be negative or above 1 (the swarm extrapolates)."
        )
