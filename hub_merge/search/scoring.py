"""Each candidate scored once, each pair's kinship measured once: the search's two caches.

Both caches are keyed by :meth:`Scorer.key`: the recipe's hash, the content fingerprints of the
local folders it reads (so a retrained folder is scored again) and :attr:`Scorer.evaluation_key`,
what is scored and how (the backend evaluator's ``key``: rows digest, metric, task weights; plus
the fitness combine). A cache copied into a run with other rows therefore never answers for them.
Held-out scores are keyed apart by the test evaluator's key. The caches live in the run folder
when there is one, which is what makes a resumed run free: the strategy, seeded, asks the same
recipes and every score is a cache hit. Tensors stay behind the :class:`SearchBackend`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ..evaluate import ScoreCache, fitness_from_scores
from ..merge.recipe import MergeRecipe
from .state import KinshipCache, RunFolder

if TYPE_CHECKING:  # settings imports the strategies, which the core imports after this module
    from .settings import RunSettings


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


def evaluation_key(evaluator: Any, metric: str, weights: Mapping[str, float], combine: str) -> str:
    """What a cached score depends on besides the models: the rows, the metric, weights, combine.

    ``evaluator`` is the backend's (its ``key`` covers the rows' digest, the metric, the task
    weights and the generation budget); a backend without one (a constructed test backend) is
    keyed by the search's metric, weights and combine alone.
    """
    rows = getattr(evaluator, "key", None) if evaluator is not None else None
    spec = [rows, metric, dict(weights), combine]
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


class Scorer:
    """Scores and kinships of candidates through a backend, behind the caches.

    Args:
        backend: evaluates recipes and measures kinship (see :class:`SearchBackend`).
        base: the recipes' base string (its fingerprint, if any, is part of every key).
        settings: the run's settings; their metric, weights and combine turn per-task scores
            into the fitness (higher is better), their kinship metric reads kinships.
        fingerprints: model string -> content fingerprint (local folders); part of cache keys.
        run: the run folder holding the caches; None keeps them in memory.
    """

    def __init__(
        self,
        backend: SearchBackend,
        *,
        base: str,
        settings: RunSettings,
        fingerprints: Mapping[str, str],
        run: RunFolder | None = None,
    ) -> None:
        self.backend = backend
        self.base = base
        self.settings = settings
        metric, combine = settings.metric, settings.combine
        self.weights = dict(settings.weights or {})
        self.fingerprints = dict(fingerprints)
        # what the scores are of: every score key includes it, so rows never mix (issue 23)
        self.evaluation_key = evaluation_key(
            getattr(backend, "evaluator", None), metric, self.weights, combine
        )
        self.test_evaluation_key = evaluation_key(
            getattr(backend, "test_evaluator", None), metric, self.weights, combine
        )
        self.evaluations = 0
        self.kinship_computed = 0
        # distinct candidates scored in this search, cached or not: the budget and generation
        # records count these, so a resumed run (all cache hits) makes the same decisions
        self.scored: set[str] = set()
        self._fresh: dict[str, dict[str, float]] = {}  # batch-scored, not yet recorded
        self.run = run
        self.scores = run.scores if run else ScoreCache()
        self.kin = run.kinship if run else KinshipCache()

    def attach(self, run: RunFolder) -> None:
        """Keep the caches in ``run`` from now on."""
        self.run = run
        self.scores = run.scores
        self.kin = run.kinship

    def key(self, recipe: MergeRecipe, evaluation: str | None = None) -> str:
        """Cache key of a candidate's dev scores: recipe hash, inputs' fingerprints, evaluation.

        ``evaluation`` defaults to :attr:`evaluation_key` (the dev rows); :meth:`score_test`
        passes the test evaluator's. The pool and the kinship cache use the dev key too, so a
        kinship copied from a run on other rows is measured again (cheap next to wrong scores).
        """
        leaves = {s: self.fingerprints[s] for s in recipe.leaves() if s in self.fingerprints}
        base_fp = self.fingerprints.get(self.base)
        if base_fp is not None:
            leaves[self.base] = base_fp
        spec = [recipe.recipe_hash(), leaves, evaluation or self.evaluation_key]
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()

    def fitness(self, scores: Mapping[str, float]) -> float:
        s = self.settings
        return fitness_from_scores(scores, s.metric, self.weights, s.combine)

    def new_count(self, recipes: Sequence[MergeRecipe]) -> int:
        """Distinct candidates scored so far plus those of ``recipes`` not scored yet."""
        new = {self.key(r) for r in recipes} - self.scored
        return len(self.scored) + len(new)

    def evaluate_batch(self, recipes: Sequence[MergeRecipe]) -> None:
        """Score a generation's cache misses together when the backend fans out (Ray).

        A backend with ``evaluate_many`` (``hub_merge.search.distributed``) scores them in
        parallel; the results wait in ``_fresh`` until :meth:`score` records them, so the
        driver alone writes the cache, in the same order as a serial run.
        """
        many = getattr(self.backend, "evaluate_many", None)
        if many is None:
            return
        todo: dict[str, MergeRecipe] = {}
        for recipe in recipes:
            key = self.key(recipe)
            if key not in todo and key not in self.scores and key not in self._fresh:
                todo[key] = recipe
        if len(todo) < 2:
            return
        for key, scores in zip(todo, many(list(todo.values())), strict=True):
            self._fresh[key] = scores

    def score(self, recipe: MergeRecipe) -> dict[str, float]:
        """The candidate's per-task dev scores: from its batch, the cache, or the backend."""
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
        self.scored.add(key)
        return scores

    def score_test(self, recipes: Mapping[str, MergeRecipe]) -> dict[str, dict[str, float]]:
        """Held-out scores (id -> scores), cached apart; empty when the backend has no test rows."""
        evaluate_test = getattr(self.backend, "evaluate_test", None)
        if evaluate_test is None or not getattr(self.backend, "has_test", True):
            return {}
        cache = self.run.test_scores if self.run is not None else ScoreCache()
        out: dict[str, dict[str, float]] = {}
        for node_id, recipe in recipes.items():
            key = self.key(recipe, self.test_evaluation_key)
            scores = cache.get(key)
            if scores is None:
                scores = evaluate_test(recipe)
                cache.put(key, scores)
            out[node_id] = scores
        return out

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
        same = 0.0 if self.settings.kinship_metric == "euclidean" else 1.0
        out = []
        for other in others:
            ko = self.key(other)
            out.append(same if ko == ka else float(self.kin.get(ka, ko)))  # type: ignore[arg-type]
        return out


__all__ = ["Scorer", "SearchBackend", "evaluation_key"]
