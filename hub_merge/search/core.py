"""The search core: one loop, one score cache, one lineage for every strategy.

``SearchCore`` scores the baselines (each expert and the uniform linear average), then runs a
strategy's ask/tell loop (``hub_merge.search.strategy``). It owns what every search shares:

- evaluation through a :class:`SearchBackend` (tensors live there), each candidate once: scores
  are cached by a key of the recipe (its hash plus the content fingerprints of the models it
  reads, so a retrained local folder is scored again), in the run folder when there is one;
- kinship, cached the same way and measured several pairs per pass when the backend can;
- the lineage (one :class:`~hub_merge.lineage.LineageNode` per candidate, generation records);
- the budget, the stop, the winner (the fittest candidate, baselines included) and checkpoints.

It has no strategy's names in it, and no tensors: the pure core is tested with constructed
backends, the real one (``hub_merge.search.backend``) is wired in ``hub_merge.search.api``.
A resumed run replays: the strategy, seeded, asks the same recipes and every score is a cache
hit, so nothing is evaluated twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from ..errors import ConfigError
from ..evaluate import COMBINES, METRICS, ScoreCache, fitness_from_scores
from ..lineage import BASE_ID, FamilyTree, GenerationRecord, LineageNode
from ..merge.recipe import MergeRecipe, ModelEntry
from .result import SearchResult
from .state import KinshipCache, RunFolder
from .strategy import Baseline, Expert, Strategy, StrategyContext, get_strategy, settings_from_dict

logger = logging.getLogger(__name__)

KINSHIP_METRICS = ("pearson", "cosine", "euclidean")
UNIFORM = "uniform"


class SearchBackend(Protocol):
    """The operations the core needs; each is called at most once per candidate (or pair)."""

    def evaluate(self, recipe: MergeRecipe) -> dict[str, float]:
        """Raw per-task dev scores of the candidate (in memory; never written to disk)."""
        ...

    def kinship(self, a: MergeRecipe, b: MergeRecipe) -> float:
        """Kinship of two candidates' task vectors relative to the common base."""
        ...

    # Optional: ``kinship_many(anchor, others) -> list[float]`` (fewer passes over the weights)
    # and ``evaluate_test(recipe) -> dict[str, float]`` (held-out rows, never the fitness).


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
        backend: evaluates recipes and measures kinship (see :class:`SearchBackend`).
        strategy: a registered strategy name; ``settings`` its settings (object or mapping).
        base: the common base (its ``source`` is the recipes' base string, its node ``base``).
        run: the run folder (caches and checkpoints); None keeps everything in memory.
        metric, weights: how per-task scores become the fitness (higher is better).
        combine: ``mean`` of the tasks, or ``harmonic`` (Model Swarms' utility for two tasks).
        fingerprints: model string -> content fingerprint (local folders); part of cache keys.

    Constructing the core builds the strategy, so bad settings fail before anything is scored.
    """

    def __init__(
        self,
        experts: Sequence[Expert],
        backend: SearchBackend,
        strategy: str = "greedy",
        settings: Any = None,
        *,
        base: Expert | None = None,
        run: RunFolder | None = None,
        tasks: Sequence[str] = (),
        metric: str = "answer_loss",
        weights: Mapping[str, float] | None = None,
        combine: str = "mean",
        kinship_metric: str = "pearson",
        seed: int = 0,
        budget: int | None = None,
        layers: Sequence[str] = (),
        fingerprints: Mapping[str, str] | None = None,
        workspace: Any = None,
        progress: bool = True,
    ) -> None:
        if len(experts) < 2:
            raise ConfigError(f"A merge search needs at least two experts; got {len(experts)}.")
        names = [e.name for e in experts]
        if len(set(names)) != len(names):
            raise ConfigError(f"Expert names must be unique; got {names}.")
        sources = [e.source for e in experts]
        if len(set(sources)) != len(sources):
            raise ConfigError(f"The same expert was given twice: {sources}.")
        if UNIFORM in names or BASE_ID in names:
            raise ConfigError(f"An expert may not be named {UNIFORM!r} or {BASE_ID!r}.")
        if metric not in METRICS:
            raise ConfigError(f"metric {metric!r} is not one of {METRICS}.")
        if kinship_metric not in KINSHIP_METRICS:
            raise ConfigError(f"kinship_metric {kinship_metric!r} is not one of {KINSHIP_METRICS}.")
        self.experts = list(experts)
        self.backend = backend
        self.strategy_cls: type[Strategy] = get_strategy(strategy)
        self.settings = settings_from_dict(strategy, settings)
        self.base = base
        self.run = run
        self.metric = metric
        self.weights = dict(weights or {})
        if combine not in COMBINES:
            raise ConfigError(f"combine {combine!r} is not one of {COMBINES}.")
        self.combine = combine
        self.kinship_metric = kinship_metric
        self.progress = progress
        self.fingerprints = dict(fingerprints or {})
        base_source = base.source if base is not None else "@base"
        self.ctx = StrategyContext(
            base=base_source,
            experts=self.experts,
            seed=seed,
            budget=budget,
            kinship=self.kinship if hasattr(backend, "kinship") else None,
            kinship_metric=kinship_metric,
            layers=list(layers),
            workspace=workspace,
        )
        self.n_baselines = len(self.experts) + 1
        population = self.strategy_cls.population(self.settings, len(self.experts), len(layers))
        if budget is not None and budget < self.n_baselines + population:
            raise ConfigError(
                f"--budget {budget} is below one generation: {self.n_baselines} baselines "
                f"(each expert and the uniform average) + a population of {population}; "
                f"give at least {self.n_baselines + population}."
            )
        self.strategy = self.strategy_cls(self.settings, self.ctx)  # validates its settings
        self.tree = FamilyTree(
            base=BASE_ID if base is not None else None,
            score_metric=metric,
            kinship_metric=kinship_metric,
            tasks=list(tasks),
            strategy=self.strategy_cls.name,
        )
        if base is not None:
            self.tree.add(_origin_node(base, BASE_ID, "base"))
        self.recipes: dict[str, MergeRecipe] = {}
        self._by_key: dict[str, str] = {}  # cache key -> node id
        self._by_source = {e.source: e.name for e in self.experts}
        self._by_source[base_source] = BASE_ID
        self.evaluations = 0
        self.kinship_computed = 0
        # distinct candidates scored in this search, cached or not: the budget and generation
        # records count these, so a resumed run (all cache hits) makes the same decisions
        self._scored: set[str] = set()
        self._fresh: dict[str, dict[str, float]] = {}  # batch-scored, not yet recorded
        self.scores = run.scores if run else ScoreCache()
        self.kin = run.kinship if run else KinshipCache()

    def attach(self, run: RunFolder) -> None:
        """Keep caches and checkpoints in ``run`` (opened after the settings were validated)."""
        self.run = run
        self.scores = run.scores
        self.kin = run.kinship

    # -- keys --------------------------------------------------------------------------------

    def key(self, recipe: MergeRecipe) -> str:
        """Cache key of a candidate: its recipe hash, plus content fingerprints of its inputs."""
        leaves = {s: self.fingerprints[s] for s in recipe.leaves() if s in self.fingerprints}
        base_fp = self.fingerprints.get(self.ctx.base)
        if base_fp is not None:
            leaves[self.ctx.base] = base_fp
        if not leaves:
            return recipe.recipe_hash()
        spec = json.dumps([recipe.recipe_hash(), leaves], sort_keys=True)
        return hashlib.sha256(spec.encode()).hexdigest()

    def node_of(self, recipe: MergeRecipe) -> str | None:
        return self._by_key.get(self.key(recipe))

    # -- services ----------------------------------------------------------------------------

    def fitness(self, scores: Mapping[str, float]) -> float:
        return fitness_from_scores(scores, self.metric, self.weights, self.combine)

    def _evaluate_batch(self, node_ids: Sequence[str]) -> None:
        """Score a generation's cache misses together when the backend fans out (Ray).

        A backend with ``evaluate_many`` (``hub_merge.search.distributed``) scores them in
        parallel; the results wait in ``_fresh`` until :meth:`_score` records them, so the
        driver alone writes the cache, in the same order as a serial run.
        """
        many = getattr(self.backend, "evaluate_many", None)
        if many is None:
            return
        todo: dict[str, MergeRecipe] = {}
        for node_id in node_ids:
            key = self.key(self.recipes[node_id])
            if key not in todo and key not in self.scores and key not in self._fresh:
                todo[key] = self.recipes[node_id]
        if len(todo) < 2:
            return
        for key, scores in zip(todo, many(list(todo.values())), strict=True):
            self._fresh[key] = scores

    def _score(self, node: LineageNode) -> float:
        recipe = self.recipes[node.id]
        key = self.key(recipe)
        scores = self._fresh.pop(key, None)
        if scores is not None:  # scored by the batch of its generation
            self.evaluations += 1
            self.scores.put(key, scores)
        else:
            scores = self.scores.get(key)
        if scores is None:
            scores = self.backend.evaluate(recipe)
            self.evaluations += 1
            self.scores.put(key, scores)
        self._scored.add(key)
        node.scores = scores
        node.fitness = self.fitness(scores)
        return node.fitness

    def score_test(self, node_ids: Sequence[str]) -> None:
        """Held-out scores of the winner and the baselines (never seen by the strategy)."""
        evaluate_test = getattr(self.backend, "evaluate_test", None)
        if evaluate_test is None or not getattr(self.backend, "has_test", True):
            return
        cache = self.run.test_scores if self.run is not None else ScoreCache()
        for node_id in dict.fromkeys(node_ids):
            key = self.key(self.recipes[node_id])
            scores = cache.get(key)
            if scores is None:
                scores = evaluate_test(self.recipes[node_id])
                cache.put(key, scores)
            self.tree.test_scores[node_id] = scores

    def kinship(self, anchor: MergeRecipe, others: Sequence[MergeRecipe]) -> list[float]:
        """The anchor's kinship to each of ``others``: cached, batched when the backend can.

        Each kinship is a pass over every weight of both models; a backend with
        ``kinship_many`` shares one pass between several pairs. NaN means unknown.
        """
        ka = self.key(anchor)
        todo: dict[str, MergeRecipe] = {}
        for other in others:
            ko = self.key(other)
            if ko != ka and ko not in todo and self.kin.get(ka, ko) is None:
                todo[ko] = other
        many = getattr(self.backend, "kinship_many", None)
        if todo and many is not None and len(todo) >= 2:
            values = many(anchor, list(todo.values()))
            for ko, value in zip(todo, values, strict=True):
                self.kin.put(ka, ko, float(value))
                self.kinship_computed += 1
        else:
            for ko, other in todo.items():
                self.kin.put(ka, ko, float(self.backend.kinship(anchor, other)))
                self.kinship_computed += 1
        same = 0.0 if self.kinship_metric == "euclidean" else 1.0
        out = []
        for other in others:
            ko = self.key(other)
            out.append(same if ko == ka else float(self.kin.get(ka, ko)))  # type: ignore[arg-type]
        return out

    def pair_kinship(self, a: MergeRecipe, b: MergeRecipe) -> float:
        return self.kinship(a, [b])[0]

    # -- lineage -----------------------------------------------------------------------------

    def _input_id(self, item: str | MergeRecipe, generation: int) -> str:
        if isinstance(item, str):
            found = self._by_source.get(item)
            if found is None:
                raise ConfigError(
                    f"A candidate reads {item!r}, which is neither the base nor one of the experts."
                )
            return found
        return self._node(item, generation, intermediate=True)

    def _node(
        self,
        recipe: MergeRecipe,
        generation: int,
        *,
        intermediate: bool = False,
        node_id: str | None = None,
    ) -> str:
        """The lineage node of a recipe (made, with its inputs' nodes, if new)."""
        if recipe.is_leaf:
            return self._input_id(recipe.models[0].model, generation)
        key = self.key(recipe)
        if key in self._by_key:
            return self._by_key[key]
        base_id = self._input_id(recipe.base, generation) if recipe.base is not None else None
        model_ids = [self._input_id(e.model, generation) for e in recipe.models]
        step = recipe.model_copy(
            update={
                "base": base_id,
                "models": [
                    ModelEntry(model=i, parameters=e.parameters)
                    for i, e in zip(model_ids, recipe.models, strict=True)
                ],
            }
        )
        parents = [i for i in ([base_id] if base_id else []) + model_ids if i != BASE_ID]
        if node_id is None:
            index = 1 + sum(
                1
                for n in self.tree.nodes.values()
                if n.kind == "merge" and n.generation == generation
            )
            node_id = f"g{generation}-{index}"
            while node_id in self.tree.nodes:
                index += 1
                node_id = f"g{generation}-{index}"
        self.tree.add(
            LineageNode(
                id=node_id,
                kind="merge",
                name=node_id,
                parents=list(dict.fromkeys(parents)),
                generation=generation,
                method=recipe.method,
                parameters=step.to_dict().get("parameters", {}),
                recipe=step.to_dict(),
                recipe_hash=key,
            )
        )
        self.recipes[node_id] = recipe
        self._by_key[key] = node_id
        return node_id

    def _record_merge(self, node: LineageNode) -> None:
        parents = [self.tree.nodes[p] for p in node.parents]
        fit = [p.fitness for p in parents if p.fitness is not None]
        if fit and len(fit) == len(parents):
            node.merge_gain = node.fitness - sum(fit) / len(fit)
        if self.strategy_cls.records_parent_kinship and len(parents) == 2:
            a, b = (self.recipes[p.id] for p in parents)
            node.parent_kinship = self.pair_kinship(a, b)

    def best(self) -> LineageNode:
        """The fittest scored candidate; ties go to the one made first (baselines first)."""
        scored = [n for n in self.tree.nodes.values() if n.fitness is not None]
        return max(scored, key=lambda n: (n.fitness, -list(self.tree.nodes).index(n.id)))

    # -- the loop ----------------------------------------------------------------------------

    def _baselines(self) -> None:
        for e in self.experts:
            node = _origin_node(e, e.name, "expert")
            node.recipe_hash = self.key(e.recipe)
            node.baseline = "expert"
            self.recipes[e.name] = e.recipe
            self._by_key[node.recipe_hash] = e.name
            self.tree.add(node)
        uniform = uniform_recipe(self.experts)
        node = self.tree.nodes[self._node(uniform, 0, node_id=UNIFORM)]
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
                evaluations=len(self._scored),
                note="baselines: each expert and the uniform average",
            )
        )
        self.tree.winner = best.id

    def _generation(self, generation: int, recipes: list[MergeRecipe]) -> None:
        from tqdm.auto import tqdm

        ids = [self._node(r, generation) for r in recipes]
        self._evaluate_batch(ids)
        before = len(self._scored)
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
        self._record(generation, ids, len(self._scored) - before)

    def _as_ids(self, value: Any) -> Any:
        if isinstance(value, MergeRecipe):
            return self.node_of(value) or "?"
        if isinstance(value, list) and value and all(isinstance(v, MergeRecipe) for v in value):
            return [self._as_ids(v) for v in value]
        return value

    def _record(self, generation: int, children: list[str], evaluations: int) -> None:
        summary = {k: self._as_ids(v) for k, v in (self.strategy.summary() or {}).items()}
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
        new = {self.key(r) for r in recipes} - self._scored
        return len(self._scored) + len(new) > budget

    def run_search(self) -> SearchResult:
        """Score the baselines, run the strategy to its stop, and return the result."""
        generation = 0
        try:
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
        except KeyboardInterrupt:
            self._checkpoint(generation, "interrupted", "interrupted")
            raise
        self.tree.validate()
        self.tree.winner = self.best().id
        self.score_test([self.tree.winner, *(n.id for n in self.tree.baselines())])
        self._checkpoint(generation, "done", reason)
        return SearchResult(
            winner=self.tree.winner,
            tree=self.tree,
            stop_reason=reason,
            generations=generation,
            evaluations=self.evaluations,
            cache_hits=self.scores.hits,
            kinship_computed=self.kinship_computed,
            strategy=self.strategy_cls.name,
            recipes=dict(self.recipes),
            run_folder=str(self.run.root) if self.run else None,
        )


def _origin_node(e: Expert, node_id: str, kind: str) -> LineageNode:
    return LineageNode(
        id=node_id,
        kind=kind,  # type: ignore[arg-type]
        name=e.name,
        repo_id=e.repo_id,
        revision=e.revision,
        path=e.path,
        is_adapter=e.is_adapter,
        license=e.license,
    )


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
    """Run a strategy over any backend (the pure entry point; ``search`` wires the real one)."""
    core = SearchCore(experts, backend, strategy, settings, **kwargs)
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
