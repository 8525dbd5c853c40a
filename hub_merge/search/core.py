"""The search core: one loop, one score cache, one lineage for every strategy.

``SearchCore`` scores the baselines (each expert and the uniform linear average), then runs a
strategy's ask/tell loop (``hub_merge.search.strategy``). It owns what every search shares:

- evaluation through a :class:`SearchBackend` (tensors live there), each candidate once: scores
  are cached by a key of the recipe (its hash plus the content fingerprints of the models it
  reads, so a retrained local folder is scored again), in the run folder when there is one;
- kinship, cached the same way and measured several pairs per pass when the backend can;
- the lineage (one :class:`~hub_merge.lineage.LineageNode` per candidate, generation records);
- the budget, the stop, the winner (the fittest candidate, baselines included) and checkpoints.

The caches live in ``scoring`` (:class:`~hub_merge.search.scoring.Scorer`), the lineage in
``pool`` (:class:`~hub_merge.search.pool.CandidatePool`); this module is the loop over them.
It has no strategy's names in it, and no tensors: the pure core is tested with constructed
backends, the real one (``hub_merge.search.backend``) is wired in ``hub_merge.search.api``.
A resumed run replays: the strategy, seeded, asks the same recipes and every score is a cache
hit, so nothing is evaluated twice.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_json
from ..errors import ConfigError
from ..evaluate import ScoreCache
from ..lineage import BASE_ID, FamilyTree, GenerationRecord, LineageNode
from ..merge.recipe import MergeRecipe, ModelEntry
from .pool import CandidatePool
from .result import SearchResult
from .scoring import Scorer, SearchBackend
from .settings import KINSHIP_METRICS as KINSHIP_METRICS  # importable here as before
from .settings import RunSettings, check_expert_count
from .state import KinshipCache, RunFolder
from .strategy import Baseline, Expert, Strategy, StrategyContext

logger = logging.getLogger(__name__)

UNIFORM = "uniform"


def uniform_recipe(experts: Sequence[Expert]) -> MergeRecipe:
    """The one-shot baseline: the linear average of every expert (mergekit normalises weights)."""
    return MergeRecipe(
        method="linear",
        models=[ModelEntry(model=e.source, parameters={"weight": 1.0}) for e in experts],
    )


class SearchCore:
    """One search: baselines, then a strategy's ask/tell loop, over a backend.

    Args:
        experts: the initial experts (two or more, unique names and sources).
        backend: evaluates recipes and measures kinship (see :class:`SearchBackend`); when it
            can ``materialize``, the run's chosen nodes are written into the run folder.
        settings: the run's :class:`~hub_merge.search.settings.RunSettings` (strategy and its
            settings, budget, seed, metric, weights, combine, kinship metric...).
        base: the common base (its ``source`` is the recipes' base string, its node ``base``).
        run: the run folder (caches and checkpoints); None keeps everything in memory.
        tasks: the dev tasks' names, in order; ``layers``: per-layer tensor-name filters.
        cancel: an event (``threading.Event``) that stops the search as Ctrl-C does, but at a
            known point: it is checked before and after each candidate is scored, so a cancel
            that arrives before the last candidate is scored always ends ``interrupted``.
        fingerprints: model string -> content fingerprint (local folders); part of cache keys.
        split: how dev and test rows were chosen (``FamilyTree.split``, for the card).
        facts: facts about the run recorded beside the settings (the merge dtype).

    Constructing the core builds the strategy, so bad settings fail before anything is scored.
    """

    def __init__(
        self,
        experts: Sequence[Expert],
        backend: SearchBackend,
        settings: RunSettings,
        *,
        base: Expert | None = None,
        run: RunFolder | None = None,
        tasks: Sequence[str] = (),
        layers: Sequence[str] = (),
        fingerprints: Mapping[str, str] | None = None,
        workspace: Any = None,
        progress: bool = True,
        split: Mapping[str, Any] | None = None,
        facts: Mapping[str, Any] | None = None,
        cancel: Any = None,
    ) -> None:
        check_expert_count(len(experts))
        names = [e.name for e in experts]
        if len(set(names)) != len(names):
            raise ConfigError(f"Expert names must be unique; got {names}.")
        sources = [e.source for e in experts]
        if len(set(sources)) != len(sources):
            raise ConfigError(f"The same expert was given twice: {sources}.")
        if UNIFORM in names or BASE_ID in names:
            raise ConfigError(f"An expert may not be named {UNIFORM!r} or {BASE_ID!r}.")
        if not isinstance(settings, RunSettings):
            raise ConfigError(
                f"SearchCore takes a RunSettings; got {type(settings).__name__} "
                "(run_strategy builds one from keyword arguments)."
            )
        self.run_settings = settings
        self.experts = list(experts)
        self.backend = backend
        self.strategy_cls: type[Strategy] = settings.strategy_cls
        self.settings = settings.settings
        self.base = base
        self.run = run
        self.progress = progress
        self.cancel = cancel  # a threading.Event: once set, the search stops at the next check
        base_source = base.source if base is not None else "@base"
        self.scorer = Scorer(
            backend,
            base=base_source,
            settings=settings,
            fingerprints=fingerprints or {},
            run=run,
        )
        self.ctx = StrategyContext(
            base=base_source,
            experts=self.experts,
            seed=settings.seed,
            budget=settings.budget,
            kinship=self.kinship if hasattr(backend, "kinship") else None,
            kinship_metric=settings.kinship_metric,
            layers=list(layers),
            workspace=workspace,
        )
        self.n_baselines = len(self.experts) + 1
        population = self.strategy_cls.population(self.settings, len(self.experts), len(layers))
        budget = settings.budget
        if budget is not None and budget < self.n_baselines + population:
            raise ConfigError(
                f"--budget {budget} is below one generation: {self.n_baselines} baselines "
                f"(each expert and the uniform average) + a population of {population}; "
                f"give at least {self.n_baselines + population}."
            )
        self.strategy = self.strategy_cls(self.settings, self.ctx)  # validates its settings
        self.tree = FamilyTree(
            base=BASE_ID if base is not None else None,
            score_metric=settings.metric,
            kinship_metric=settings.kinship_metric,
            tasks=list(tasks),
            strategy=self.strategy_cls.name,
            # the settings, written once: every checkpoint carries them (live tables, the card)
            settings={**settings.to_dict(), **dict(facts or {})},
            split=dict(split or {}),
        )
        sources = {e.source: e.name for e in self.experts}
        sources[base_source] = BASE_ID
        self.pool = CandidatePool(self.tree, self.scorer.key, sources)
        if base is not None:
            self.pool.add_base(base)
        self.recipes = self.pool.recipes  # node id -> recipe (the pool's, not a copy)

    def attach(self, run: RunFolder) -> None:
        """Keep caches and checkpoints in ``run`` (opened after the settings were validated)."""
        self.run = run
        self.scorer.attach(run)

    # -- the scorer's and the pool's, under the names the API and strategies use ---------------

    @property
    def scores(self) -> ScoreCache:
        return self.scorer.scores

    @property
    def kin(self) -> KinshipCache:
        return self.scorer.kin

    @property
    def evaluations(self) -> int:
        return self.scorer.evaluations

    @property
    def kinship_computed(self) -> int:
        return self.scorer.kinship_computed

    def key(self, recipe: MergeRecipe) -> str:
        return self.scorer.key(recipe)

    def node_of(self, recipe: MergeRecipe) -> str | None:
        return self.pool.node_of(recipe)

    def fitness(self, scores: Mapping[str, float]) -> float:
        return self.scorer.fitness(scores)

    def kinship(self, anchor: MergeRecipe, others: Sequence[MergeRecipe]) -> list[float]:
        """The anchor's kinship to each of ``others`` (cached; see ``Scorer.kinship``)."""
        return self.scorer.kinship(anchor, others)

    def pair_kinship(self, a: MergeRecipe, b: MergeRecipe) -> float:
        return self.kinship(a, [b])[0]

    def best(self) -> LineageNode:
        """The fittest scored candidate; ties go to the one made first (baselines first)."""
        return self.pool.best()

    def score_test(self, node_ids: Sequence[str]) -> None:
        """Held-out scores of the winner and the baselines (never seen by the strategy)."""
        recipes = {node_id: self.recipes[node_id] for node_id in dict.fromkeys(node_ids)}
        self.tree.test_scores.update(self.scorer.score_test(recipes))

    def _check_cancel(self) -> None:
        """Stop here if asked (see ``cancel``): the run is then saved as interrupted."""
        if self.cancel is not None and self.cancel.is_set():
            raise KeyboardInterrupt("search cancelled")

    def _score(self, node: LineageNode) -> float:
        self._check_cancel()
        node.scores = self.scorer.score(self.recipes[node.id])
        self._check_cancel()  # a cancel during the scoring wins over its result
        node.fitness = self.fitness(node.scores)
        return node.fitness

    def _evaluate_batch(self, node_ids: Sequence[str]) -> None:
        self._check_cancel()
        self.scorer.evaluate_batch([self.recipes[i] for i in node_ids])
        self._check_cancel()

    def _record_merge(self, node: LineageNode) -> None:
        parents = [self.tree.nodes[p] for p in node.parents]
        fit = [p.fitness for p in parents if p.fitness is not None]
        if fit and len(fit) == len(parents):
            node.merge_gain = node.fitness - sum(fit) / len(fit)
        if self.strategy_cls.records_parent_kinship and len(parents) == 2:
            a, b = (self.recipes[p.id] for p in parents)
            node.parent_kinship = self.pair_kinship(a, b)

    # -- the loop ----------------------------------------------------------------------------

    def _baselines(self) -> None:
        for e in self.experts:
            self.pool.add_expert(e)
        uniform = uniform_recipe(self.experts)
        node = self.tree.nodes[self.pool.node(uniform, 0, node_id=UNIFORM)]
        node.baseline = UNIFORM
        self._evaluate_batch([e.name for e in self.experts] + [UNIFORM])
        for e in self.experts:
            self._score(self.tree.nodes[e.name])
            self.ctx.baselines[f"expert:{e.name}"] = Baseline(
                e.recipe, self.tree.nodes[e.name].fitness
            )
        self._score(node)
        self.ctx.baselines[UNIFORM] = Baseline(uniform, node.fitness)
        best = self.best()
        self.tree.generations.append(
            GenerationRecord(
                generation=0,
                best_fitness=best.fitness,
                best_id=best.id,
                top=[n.id for n in self.tree.baselines()],
                evaluations=len(self.scorer.scored),
                note="baselines: each expert and the uniform average",
            )
        )
        self.tree.winner = best.id

    def _generation(self, generation: int, recipes: list[MergeRecipe]) -> None:
        from tqdm.auto import tqdm

        ids = [self.pool.node(r, generation) for r in recipes]
        self._evaluate_batch(ids)
        before = len(self.scorer.scored)
        bar = tqdm(
            ids,
            desc=f"generation {generation}",
            unit="model",
            disable=not self.progress,
            leave=False,
        )
        fitness: list[float] = []
        for node_id in bar:
            node = self.tree.nodes[node_id]
            fresh = node.fitness is None
            fitness.append(self._score(node))
            if fresh and node.kind == "merge":
                self._record_merge(node)
            bar.set_postfix(best=f"{self.best().fitness:.4g}")
        self.strategy.tell(recipes, fitness)
        self._record(generation, ids, len(self.scorer.scored) - before)

    def _record(self, generation: int, children: list[str], evaluations: int) -> None:
        summary = {k: self.pool.as_ids(v) for k, v in (self.strategy.summary() or {}).items()}
        best = self.best()
        best_id = summary.pop("best", None) or best.id
        best_fitness = summary.pop("best_fitness", None)
        if best_fitness is None:
            best_fitness = self.tree.nodes[best_id].fitness
        record = GenerationRecord(
            generation=generation,
            best_fitness=float(best_fitness),
            best_id=best_id,
            top=list(summary.pop("top", None) or [best_id]),
            top_kinship=summary.pop("top_kinship", None),
            evaluations=evaluations,
            children=list(dict.fromkeys(children)),
            note=str(summary.pop("note", "")),
            stats=_jsonable(summary),
        )
        self.tree.generations.append(record)
        self.tree.winner = best.id
        self._checkpoint(generation, "running")
        logger.info("generation %d: best %s fitness %.4g", generation, best.id, best.fitness)

    def _checkpoint(self, generation: int, status: str, stop_reason: str | None = None) -> None:
        if self.run is not None:
            self.run.save_tree(self.tree)
            self.run.save_state(
                status=status,
                generation=generation,
                stop_reason=stop_reason,
                winner=self.tree.winner,
            )

    def _over_budget(self, recipes: Sequence[MergeRecipe]) -> bool:
        budget = self.ctx.budget
        if budget is None:
            return False
        return self.scorer.new_count(recipes) > budget

    def run_search(self, materialize: Sequence[str] = ()) -> SearchResult:
        """Score the baselines, run the strategy to its stop, record the run and return it.

        With a run folder, the finished run is saved there once: the family tree (settings,
        split, expert kinships, test scores of the winner, the baselines and ``materialize``),
        ``recipes.json``, the plots, and each node of ``materialize`` (node ids, or
        ``"winner"``) as a model folder.
        """
        generation = 0
        try:
            self._check_cancel()
            self._baselines()
            self._checkpoint(0, "running")
            self.strategy.prepare()
            while True:
                reason = self.strategy.stop_reason()
                if reason:
                    break
                recipes = self.strategy.ask()
                if not recipes:
                    reason = self.strategy.stop_reason() or "the strategy proposed nothing new"
                    break
                if self._over_budget(recipes):
                    reason = f"budget of {self.ctx.budget} evaluations spent"
                    break
                generation += 1
                self._generation(generation, recipes)
            self.tree.validate()
            self.tree.winner = self.best().id
            self.score_test([self.tree.winner, *(n.id for n in self.tree.baselines())])
        except KeyboardInterrupt:
            self._checkpoint(generation, "interrupted", "interrupted")
            raise
        return self._finish(generation, reason, materialize)

    def _finish(self, generation: int, reason: str, materialize: Sequence[str]) -> SearchResult:
        """Record the finished run: winner, expert kinships, test scores, files; save once."""
        tree = self.tree
        tree.validate()
        tree.winner = self.best().id
        wanted = {w: tree.winner if w == "winner" else w for w in materialize}
        unknown = [w for w, node_id in wanted.items() if node_id not in self.recipes]
        if unknown:
            raise ConfigError(
                f"Cannot materialise {unknown[0]!r}: no such node in the run "
                f"(nodes: {list(self.recipes)[:8]}...)."
            )
        if hasattr(self.backend, "kinship"):  # the experts' kinship matrix, for the card
            names = [e.name for e in self.experts]
            tree.kinship_ids = names
            tree.kinship_matrix = [
                self.kinship(self.recipes[a], [self.recipes[b] for b in names]) for a in names
            ]
        # held-out scores of the winner, the baselines and every node written out (publishable)
        self.score_test([tree.winner, *(n.id for n in tree.baselines()), *wanted.values()])
        tree.settings["stop_reason"] = reason
        result = SearchResult(
            winner=tree.winner,
            tree=tree,
            stop_reason=reason,
            generations=generation,
            evaluations=self.evaluations,
            cache_hits=self.scores.hits,
            kinship_computed=self.kinship_computed,
            strategy=self.strategy_cls.name,
            recipes=dict(self.recipes),
            run_folder=str(self.run.root) if self.run else None,
        )
        if self.run is not None:
            root = self.run.root
            atomic_write_json(
                root / "recipes.json", {k: r.to_dict() for k, r in self.recipes.items()}
            )
            self.run.save_tree(tree)
            _plots(tree, root)
            for name, node_id in wanted.items():
                out = self._materialize(name, node_id)
                if name == "winner":
                    result.winner_path = str(out)
            self.run.save_state(
                status="done",
                generation=generation,
                stop_reason=reason,
                winner=tree.winner,
                winner_path=result.winner_path,
            )
        return result

    def _materialize(self, wanted: str, node_id: str) -> Path:
        """Write a node as a model folder (``RUN/winner`` or ``RUN/nodes/<id>``), once.

        A ``*.recipe.json`` marker beside each folder says what it holds, so a resumed run
        rewrites a node only when its recipe changed (or its folder was left half-written).
        """
        root = self.run.root  # type: ignore[union-attr]
        out = root / ("winner" if wanted == "winner" else f"nodes/{node_id}")
        marker = root / (
            f"{out.name}.recipe.json" if wanted == "winner" else f"nodes/{node_id}.recipe.json"
        )
        recipe = self.recipes[node_id].to_dict()
        if not (out.exists() and marker.is_file() and json.loads(marker.read_text()) == recipe):
            shutil.rmtree(out, ignore_errors=True)
            out.parent.mkdir(parents=True, exist_ok=True)
            self.backend.materialize(self.recipes[node_id], out)  # type: ignore[attr-defined]
            atomic_write_json(marker, recipe)
        return out


def _plots(tree: FamilyTree, root: Path) -> None:
    from .plots import has_trajectory, plot_family_tree, plot_fitness, plot_trajectory

    try:
        plot_fitness(tree, root / "fitness.png")
        plot_family_tree(tree, root / "family_tree.png")
        if has_trajectory(tree):  # a search over mixing coefficients (the swarm)
            plot_trajectory(tree, root / "trajectory.png")
    except (OSError, ValueError) as err:  # a plot must never cost the user a finished search
        logger.warning("Search finished but plotting failed (%s); the run folder is intact.", err)


def _jsonable(data: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in data.items():
        try:
            json.dumps(v)
        except TypeError:
            v = repr(v)
        if isinstance(v, float) and not math.isfinite(v):
            v = None
        out[k] = v
    return out


def run_strategy(
    experts: Sequence[Expert],
    backend: SearchBackend,
    strategy: str = "greedy",
    settings: Any = None,
    *,
    run: RunFolder | None = None,
    **kwargs: Any,
) -> SearchResult:
    """Run a strategy over any backend (the pure entry point; ``search`` wires the real one).

    Keyword arguments named like a :class:`RunSettings` field (``budget``, ``seed``,
    ``metric``, ``weights``, ``combine``, ``kinship_metric``...) build the run's settings; the
    rest go to :class:`SearchCore`.
    """
    shared = {f.name for f in dataclasses.fields(RunSettings)} - {"strategy", "settings"}
    given = {k: kwargs.pop(k) for k in list(kwargs) if k in shared}
    if given.get("weights") is None:
        given.pop("weights", None)
    core = SearchCore(experts, backend, RunSettings(strategy, settings, **given), **kwargs)
    if run is not None:
        core.attach(run)
    return core.run_search()


def run_greedy(
    experts: Sequence[Expert], backend: SearchBackend, settings: Any = None, **kwargs: Any
) -> SearchResult:
    """The greedy strategy over any backend (``run_strategy(..., "greedy", settings)``).

    >>> result = run_greedy(experts, backend, GreedySettings(k=3, generations=4))  # doctest: +SKIP
    >>> result.winner, result.tree.nodes[result.winner].fitness                    # doctest: +SKIP
    """
    return run_strategy(experts, backend, "greedy", settings, **kwargs)
