"""``--strategy dam``: DAM, Differentiable Adaptive Merging (Arcee AI 2024), as a strategy.

DAM is trained, not searched: ``prepare()`` learns the per-column coefficients by gradient
descent (``hub_merge.dam``) through the core's workspace, and the single ``ask()`` returns the
recipe of the trained merge (``method: dam``, the coefficient file's digest and the training
settings), which the core scores, records and publishes like any other candidate. The experts are
its parents in the lineage; the uniform average it starts from is the baseline it must beat.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ...dam.settings import PAPER_URL, DamSettings
from ...errors import ConfigError
from ...merge.recipe import MergeRecipe
from ..strategy import Strategy, StrategyContext, register_strategy


@register_strategy
class DamStrategy(Strategy):
    """Train DAM's coefficients once, then propose the trained merge as one candidate."""

    name: ClassVar[str] = "dam"
    settings_type: ClassVar[type] = DamSettings
    title: ClassVar[str] = "DAM: per-column merge coefficients learned by distilling each expert"
    paper: ClassVar[str | None] = PAPER_URL
    reads_train_rows: ClassVar[bool] = True
    # More steps continue the training from its checkpoint; the others only change how it runs.
    resumable: ClassVar[frozenset[str]] = frozenset(
        {"steps", "checkpoint_every", "teacher_cache_mb"}
    )

    def __init__(self, settings: DamSettings, ctx: StrategyContext) -> None:
        super().__init__(settings, ctx)
        self.recipe: MergeRecipe | None = None
        self.result: Any = None
        self.fitness: float | None = None
        self._asked = False
        workspace = ctx.workspace
        if workspace is not None:  # bad input fails before any baseline is scored
            self._prompts()

    def _prompts(self) -> dict[str, list[Any]]:
        """Each expert's own prompts: its task's training rows when given, else its dev rows."""
        from ...dam import assign_tasks

        ws = self.ctx.workspace
        train = {t.name: t for t in getattr(ws, "train_tasks", None) or []}
        rows = {t.name: list((train.get(t.name) or t).examples) for t in ws.dev_tasks}
        return assign_tasks([e.name for e in self.ctx.experts], rows)

    def prepare(self) -> None:
        from ...dam import train_dam
        from ...dam.recipe import dam_recipe

        ws = self.ctx.workspace
        if ws is None or ws.artefacts is None:
            raise ConfigError(
                "DAM trains on the experts' weights: run it through hub_merge.search.search "
                "(hub-merge search --strategy dam), which gives it the run's workspace."
            )
        experts = {e.name: ws.expert_folders[e.name] for e in self.ctx.experts}
        self.result = train_dam(
            experts,
            self._prompts(),
            ws.artefacts,
            base=ws.base_folder,
            settings=self.settings,
            device=ws.device,
            progress=bool(getattr(ws, "progress", True)),
            seed=self.ctx.seed,
            base_state=getattr(ws, "base_state", None),
        )
        import gc

        from ...rss import return_freed_memory

        gc.collect()  # the trained module and its optimizer, before the core scores the merge
        return_freed_memory()
        self.recipe = dam_recipe(
            self.ctx.base,
            [e.source for e in self.ctx.experts],
            self.result.coefficients,
            self.result.digest,
            {**self.settings.recipe_settings(), "seed": self.ctx.seed},
        )

    def ask(self) -> list[MergeRecipe]:
        if self._asked or self.recipe is None:
            return []
        self._asked = True
        return [self.recipe]

    def tell(self, recipes: list[MergeRecipe], fitness: list[float]) -> None:
        self.fitness = fitness[0]

    def stop_reason(self) -> str | None:
        return "DAM trained once and scored" if self._asked else None

    def summary(self) -> dict[str, Any]:
        r = self.result
        if r is None or self.recipe is None:
            return {}
        uniform = self.ctx.baselines.get("uniform")
        note = f"DAM: {r.steps} gradient steps, KL {r.history[0]:.4g} -> {r.history[-1]:.4g}"
        if r.resumed_from:
            note += f" (resumed at step {r.resumed_from})"
        out: dict[str, Any] = {
            "best": self.recipe,
            "note": note,
            "gradient_steps": r.steps,
            "train_seconds": round(r.wall_s, 2),
            "kl_first": r.history[0] if r.history else None,
            "kl_last": r.history[-1] if r.history else None,
            "coefficients_sha256": r.digest,
        }
        if uniform is not None and self.fitness is not None:
            out["uniform_fitness"] = uniform.fitness
        return out

    @classmethod
    def explain(cls) -> str:
        return (
            f"This merge was trained with DAM ([Differentiable Adaptive Merging]({PAPER_URL}), "
            "Arcee AI 2024), as the reference code trains it. Every linear layer of every "
            "expert (lm_head included) got one coefficient per input column, starting at 1/N "
            "(bias coefficients at 1, as in the reference), and only these coefficients were "
            "trained: on T² times the sum over experts of KL(expert ‖ merge) at temperature T "
            "on each expert's own prompts, plus a small penalty on how similar the experts' "
            "coefficient vectors are, with MoFO-AdamW (or AdamW) and the gradient norm clipped "
            "at 1. The experts' weights were not changed; the coefficients are in "
            "`dam_coefficients.safetensors` beside the model."
        )

    @classmethod
    def population(cls, settings: Any, n_experts: int, n_layers: int) -> int:
        return 1
