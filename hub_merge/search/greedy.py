"""Top-k greedy merging with kinship-guided exploration (Hu et al. 2024), made precise.

The algorithm (design/algorithms.md, section 2)::

    pool = initial experts, each evaluated
    generation 1: merge every pair of experts; evaluate; pool += children
    top = k fittest; previous_top = none
    while top != previous_top and generation < max:
        previous_top = top; snapshot = pool
        children = merge(a, b) for every pair in top not merged before        # exploitation
        if kinship-guided:                                                    # exploration
            best = fittest in top; far = argmin_{m in snapshot, m != best} kinship(m, best)
            children += merge(best, far) if not merged before
        evaluate children; pool += children; top = k fittest
        stop also on no improvement for `patience` generations, or when the mean pairwise
        kinship among the top exceeds a threshold (0.9 PCC)

This module is pure: tensors are reached only through a :class:`SearchBackend` (evaluate one
candidate, measure the kinship of two), so the search is tested with constructed fitness
functions and the real merge engine is wired in ``hub_merge.search.backend``. Candidates are
identified by their *recipe tree* (a merged node's tensors are a deterministic function of it),
so scores and kinship are cached by recipe hash and a resumed run replays from the caches.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from ..errors import ConfigError
from ..evaluate import LOWER_IS_BETTER, METRICS, ScoreCache, fitness_from_scores
from ..lineage import FamilyTree, GenerationRecord, LineageNode
from .state import KinshipCache, RunFolder

logger = logging.getLogger(__name__)

# The paper's merge step: pairwise SLERP, fitter parent as base_model, layer-wise t schedule.
PAPER_SLERP_PARAMETERS: dict[str, Any] = {
    "t": [
        {"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
        {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]},
        {"value": 0.5},
    ]
}
KINSHIP_METRICS = ("pearson", "cosine", "euclidean")
# Defaults for other pairwise steps (mergekit names; per-input globals apply to both parents).
DEFAULT_PARAMETERS: dict[str, dict[str, Any]] = {
    "slerp": PAPER_SLERP_PARAMETERS,
    "linear": {"weight": 1.0},
    "task_arithmetic": {"weight": 0.5},
    "ties": {"weight": 1.0, "density": 0.5},
    "dare_ties": {"weight": 1.0, "density": 0.5},
    "dare_linear": {"weight": 0.5, "density": 0.5},
}


# --- candidates and the backend ---------------------------------------------------------------


@dataclass(frozen=True)
class Original:
    """An initial expert. ``source`` identifies its weights (``org/name@sha`` or a folder)."""

    name: str
    source: str
    repo_id: str | None = None
    revision: str | None = None
    path: str | None = None
    is_adapter: bool = False
    license: str | None = None


@dataclass(frozen=True)
class Candidate:
    """What the backend is asked about: a node id and its recipe tree.

    ``recipe`` is ``{"model": source}`` for an original, or ``{"method", "parameters", "base",
    "models"}`` where ``base`` and each of ``models`` are recipe trees (``base`` may be the
    string ``"@base"``: the search's common base model).
    """

    id: str
    recipe: dict[str, Any]

    @property
    def recipe_hash(self) -> str:
        return recipe_hash(self.recipe)


def recipe_hash(recipe: dict[str, Any]) -> str:
    return hashlib.sha256(
        json.dumps(recipe, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


class SearchBackend(Protocol):
    """The operations the search needs; each is called at most once per recipe (or pair)."""

    def evaluate(self, candidate: Candidate) -> dict[str, float]:
        """Raw per-task scores of the candidate (in memory; never written to disk)."""
        ...

    def kinship(self, a: Candidate, b: Candidate) -> float:
        """Kinship of two candidates' task vectors relative to the common base."""
        ...

    # Optional: ``kinship_many(anchor, others) -> list[float]``, the anchor's kinship to each of
    # ``others`` in fewer passes over the weights; used when present (see ``_kinship_row``).


# --- settings and result ----------------------------------------------------------------------


@dataclass
class GreedySettings:
    """Knobs of the greedy search (everything but generations/patience is fingerprinted)."""

    k: int = 3
    generations: int = 5
    method: str = "slerp"
    parameters: dict[str, Any] | None = None  # None: DEFAULT_PARAMETERS[method] (paper's SLERP)
    parent_as_base: bool | None = None  # None: True for slerp (fitter parent is base_model)
    kinship_guided: bool = True
    kinship_stop: float | None = 0.9
    kinship_metric: str = "pearson"
    patience: int = 2
    metric: str = "answer_loss"
    weights: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.parameters is None:
            self.parameters = json.loads(json.dumps(DEFAULT_PARAMETERS.get(self.method, {})))
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
        if self.kinship_metric not in KINSHIP_METRICS:
            raise ConfigError(
                f"kinship_metric {self.kinship_metric!r} is not one of {KINSHIP_METRICS}."
            )
        if self.metric not in METRICS:
            raise ConfigError(f"metric {self.metric!r} is not one of {METRICS}.")

    def fingerprinted(self) -> dict[str, Any]:
        """The settings that change which models are made and how they score."""
        data = asdict(self)
        data.pop("generations")
        data.pop("patience")
        return data


@dataclass
class SearchResult:
    """What a search returns: the winner, the whole family tree and what it cost."""

    winner: str
    tree: FamilyTree
    stop_reason: str
    generations: int
    evaluations: int  # candidates actually scored in this call (cache misses)
    cache_hits: int
    kinship_computed: int
    run_folder: str | None = None
    winner_path: str | None = None

    @property
    def winner_node(self) -> LineageNode:
        return self.tree.nodes[self.winner]

    def to_dict(self) -> dict[str, Any]:
        node = self.winner_node
        return {
            "winner": self.winner,
            "fitness": node.fitness,
            "scores": node.scores,
            "stop_reason": self.stop_reason,
            "generations": self.generations,
            "evaluations": self.evaluations,
            "cache_hits": self.cache_hits,
            "kinship_computed": self.kinship_computed,
            "nodes": len(self.tree.nodes),
            "run_folder": self.run_folder,
            "winner_path": self.winner_path,
        }


# --- the search -------------------------------------------------------------------------------


class GreedySearch:
    """One run of the greedy search over a backend; see the module docstring for the loop."""

    def __init__(
        self,
        originals: Sequence[Original],
        backend: SearchBackend,
        settings: GreedySettings,
        *,
        run: RunFolder | None = None,
        base: Original | None = None,
        tasks: Sequence[str] = (),
        progress: bool = True,
    ) -> None:
        if len(originals) < 2:
            raise ConfigError(f"A greedy search needs at least two experts; got {len(originals)}.")
        names = [o.name for o in originals]
        if len(set(names)) != len(names):
            raise ConfigError(f"Expert names must be unique; got {names}.")
        sources = [o.source for o in originals]
        if len(set(sources)) != len(sources):
            raise ConfigError(f"The same expert was given twice: {sources}.")
        self.originals = list(originals)
        self.backend = backend
        self.settings = settings
        self.run = run
        self.progress = progress
        self.scores = run.scores if run else ScoreCache()
        self.kin = run.kinship if run else KinshipCache()
        self.tree = FamilyTree(
            base=base.name if base else None,
            score_metric=settings.metric,
            kinship_metric=settings.kinship_metric,
            tasks=list(tasks),
            settings=asdict(settings),
        )
        if base is not None:
            self.tree.add(
                LineageNode(
                    id=base.name,
                    kind="base",
                    name=base.name,
                    repo_id=base.repo_id,
                    revision=base.revision,
                    path=base.path,
                    license=base.license,
                )
            )
        self.recipes: dict[str, dict[str, Any]] = {}
        self.merged_pairs: set[frozenset[str]] = set()
        self.evaluations = 0
        self.kinship_computed = 0
        # Distinct candidates scored so far in this search, cached or not: generation records
        # count these, so a resumed run (all cache hits) writes the same records as the first.
        self._scored: set[str] = set()

    # -- bookkeeping -------------------------------------------------------------------------

    def _fitness(self, scores: dict[str, float]) -> float:
        return fitness_from_scores(scores, self.settings.metric, self.settings.weights)

    def _candidate(self, node_id: str) -> Candidate:
        return Candidate(node_id, self.recipes[node_id])

    def _score(self, node: LineageNode) -> None:
        cand = self._candidate(node.id)
        key = cand.recipe_hash
        scores = self.scores.get(key)
        if scores is None:
            scores = self.backend.evaluate(cand)
            self.evaluations += 1
            self.scores.put(key, scores)
        self._scored.add(key)
        node.scores = scores
        node.fitness = self._fitness(scores)

    def _kinship_row(self, anchor: str, others: Sequence[str]) -> None:
        """Measure the anchor's kinship to several nodes at once, when the backend can.

        Each kinship is a pass over every weight of both models; a backend with ``kinship_many``
        shares one pass between many pairs (the one-pass matrix), so the exploration step costs
        about one pass instead of one per pool member. Values land in the same cache that
        :meth:`kinship` reads, so the search's decisions do not depend on which path ran.
        """
        many = getattr(self.backend, "kinship_many", None)
        ha = recipe_hash(self.recipes[anchor])
        todo = [
            m
            for m in others
            if m != anchor and self.kin.get(ha, recipe_hash(self.recipes[m])) is None
        ]
        if many is None or len(todo) < 2:
            return
        values = many(self._candidate(anchor), [self._candidate(m) for m in todo])
        for m, value in zip(todo, values, strict=True):
            self.kin.put(ha, recipe_hash(self.recipes[m]), float(value))
            self.kinship_computed += 1

    def kinship(self, a: str, b: str) -> float:
        ha, hb = recipe_hash(self.recipes[a]), recipe_hash(self.recipes[b])
        value = self.kin.get(ha, hb)
        if value is None:
            value = float(self.backend.kinship(self._candidate(a), self._candidate(b)))
            self.kinship_computed += 1
            self.kin.put(ha, hb, value)
        return value

    def _closeness(self, value: float) -> float:
        """Kinship as 'higher = closer kin' (Euclidean is a distance)."""
        if math.isnan(value):
            return -math.inf
        return -value if self.settings.kinship_metric == "euclidean" else value

    def ranked(self) -> list[str]:
        """Pool ids, fittest first; ties go to the node added first."""
        order = {nid: i for i, nid in enumerate(self.tree.nodes)}
        pool = [n for n in self.tree.nodes.values() if n.kind != "base"]
        pool.sort(key=lambda n: (-(n.fitness if n.fitness is not None else -math.inf), order[n.id]))
        return [n.id for n in pool]

    def top(self) -> list[str]:
        return self.ranked()[: self.settings.k]

    def top_kinship(self, top: Sequence[str]) -> float | None:
        pairs = list(itertools.combinations(top, 2))
        if not pairs:
            return None
        for i, a in enumerate(top[:-1]):
            self._kinship_row(a, top[i + 1 :])
        values = [self.kinship(a, b) for a, b in pairs]
        return sum(values) / len(values)

    def _child(self, a: str, b: str, generation: int, index: int) -> LineageNode:
        na, nb = self.tree.nodes[a], self.tree.nodes[b]
        # the fitter parent is SLERP's base_model (ties: the older node), recorded in parameters
        first, second = (na, nb) if self.ranked().index(a) < self.ranked().index(b) else (nb, na)
        s = self.settings
        if s.parent_as_base:
            recipe = {
                "method": s.method,
                "parameters": s.parameters,
                "base": self.recipes[first.id],
                "models": [self.recipes[second.id]],
            }
            params = {**s.parameters, "base_model": first.id}
        else:
            recipe = {
                "method": s.method,
                "parameters": s.parameters,
                "base": "@base",
                "models": [self.recipes[first.id], self.recipes[second.id]],
            }
            params = dict(s.parameters)
        node_id = f"g{generation}-{index}"
        self.recipes[node_id] = recipe
        return LineageNode(
            id=node_id,
            kind="merge",
            name=node_id,
            parents=[first.id, second.id],
            generation=generation,
            method=s.method,
            parameters=params,
            recipe_hash=recipe_hash(recipe),
        )

    def _run_generation(
        self, generation: int, pairs: Sequence[tuple[str, str]], note: str
    ) -> GenerationRecord:
        from tqdm.auto import tqdm

        children = []
        for i, (a, b) in enumerate(pairs, start=1):
            self.merged_pairs.add(frozenset((a, b)))
            children.append(self._child(a, b, generation, i))
        before = len(self._scored)
        bar = tqdm(
            children,
            desc=f"generation {generation}",
            unit="merge",
            disable=not self.progress,
            leave=False,
        )
        for child in bar:
            self._score(child)
            pa, pb = (self.tree.nodes[p] for p in child.parents)
            child.merge_gain = child.fitness - (pa.fitness + pb.fitness) / 2
            # parents' kinship right after the merge, while the backend still holds them
            child.parent_kinship = self.kinship(pa.id, pb.id)
            self.tree.add(child)
            bar.set_postfix(
                best=f"{max(n.fitness for n in self.tree.nodes.values() if n.fitness is not None):.4g}"
            )
        top = self.top()
        best = self.tree.nodes[top[0]]
        record = GenerationRecord(
            generation=generation,
            best_fitness=best.fitness,
            best_id=best.id,
            top=top,
            top_kinship=self.top_kinship(top),
            evaluations=len(self._scored) - before,
            children=[c.id for c in children],
            note=note,
        )
        self.tree.generations.append(record)
        self.tree.winner = best.id
        self._checkpoint(generation, "running")
        logger.info(
            "generation %d: best %s fitness %.4g top %s", generation, best.id, best.fitness, top
        )
        return record

    def _checkpoint(self, generation: int, status: str, stop_reason: str | None = None) -> None:
        if self.run is not None:
            self.run.save_tree(self.tree)
            self.run.save_state(
                status=status,
                generation=generation,
                stop_reason=stop_reason,
                winner=self.tree.winner,
            )

    # -- the loop ----------------------------------------------------------------------------

    def run_search(self) -> SearchResult:
        s = self.settings
        generation = 0
        try:
            for o in self.originals:  # generation 0: the experts themselves
                self.recipes[o.name] = {"model": o.source}
                node = LineageNode(
                    id=o.name,
                    kind="expert",
                    name=o.name,
                    repo_id=o.repo_id,
                    revision=o.revision,
                    path=o.path,
                    is_adapter=o.is_adapter,
                    license=o.license,
                    recipe_hash=recipe_hash(self.recipes[o.name]),
                )
                self._score(node)
                self.tree.add(node)
            top = self.top()
            self.tree.generations.append(
                GenerationRecord(
                    generation=0,
                    best_fitness=self.tree.nodes[top[0]].fitness,
                    best_id=top[0],
                    top=top,
                    evaluations=len(self._scored),
                    note="experts",
                )
            )
            self.tree.winner = top[0]
            self._checkpoint(0, "running")

            names = [o.name for o in self.originals]
            generation = 1
            self._run_generation(1, list(itertools.combinations(names, 2)), "all pairs of experts")
            previous_top: list[str] | None = None
            best_so_far = self.tree.generations[-1].best_fitness
            stale = 0
            stop_reason = "max generations reached"
            while True:
                record = self.tree.generations[-1]
                if record.best_fitness > best_so_far + 1e-12:
                    best_so_far, stale = record.best_fitness, 0
                elif generation > 1:
                    stale += 1
                if previous_top is not None and record.top == previous_top:
                    stop_reason = "top-k unchanged"
                    break
                if stale >= s.patience:
                    stop_reason = f"no improvement for {s.patience} generations"
                    break
                if (
                    s.kinship_stop is not None
                    and record.top_kinship is not None
                    and (self._closeness(record.top_kinship) > self._closeness(s.kinship_stop))
                ):
                    stop_reason = (
                        f"kinship among the top {record.top_kinship:.3f} crossed {s.kinship_stop}"
                    )
                    break
                if generation >= s.generations:
                    stop_reason = "max generations reached"
                    break
                previous_top = list(record.top)
                snapshot = self.ranked()
                pairs = [
                    (a, b)
                    for a, b in itertools.combinations(record.top, 2)
                    if frozenset((a, b)) not in self.merged_pairs
                ]
                note = "exploitation"
                if s.kinship_guided:
                    best = record.top[0]
                    others = [m for m in snapshot if m != best]
                    self._kinship_row(best, others)
                    far = min(
                        others,
                        key=lambda m: (self._closeness(self.kinship(best, m)), snapshot.index(m)),
                    )
                    if frozenset((best, far)) not in self.merged_pairs and (best, far) not in pairs:
                        pairs.append((best, far))
                        note = f"exploitation + exploration ({best} x {far})"
                    else:
                        note = (
                            f"exploitation (exploration partner {far} already merged with {best})"
                        )
                if not pairs:
                    stop_reason = "no new pairs to merge"
                    break
                generation += 1
                self._run_generation(generation, pairs, note)
        except KeyboardInterrupt:
            self._checkpoint(generation, "interrupted", "interrupted")
            raise
        self.tree.validate()
        self._checkpoint(generation, "done", stop_reason)
        return SearchResult(
            winner=self.tree.winner or self.top()[0],
            tree=self.tree,
            stop_reason=stop_reason,
            generations=generation,
            evaluations=self.evaluations,
            cache_hits=self.scores.hits,
            kinship_computed=self.kinship_computed,
            run_folder=str(self.run.root) if self.run else None,
        )


def run_greedy(
    originals: Sequence[Original],
    backend: SearchBackend,
    settings: GreedySettings | None = None,
    *,
    run: RunFolder | None = None,
    base: Original | None = None,
    tasks: Sequence[str] = (),
    progress: bool = True,
) -> SearchResult:
    """Run the greedy search over any backend (the pure entry point; see ``greedy_search``).

    >>> result = run_greedy(experts, backend, GreedySettings(k=3, generations=4))  # doctest: +SKIP
    >>> result.winner, result.tree.nodes[result.winner].fitness                    # doctest: +SKIP
    """
    search = GreedySearch(
        originals,
        backend,
        settings or GreedySettings(),
        run=run,
        base=base,
        tasks=tasks,
        progress=progress,
    )
    return search.run_search()


__all__ = [
    "LOWER_IS_BETTER",
    "DEFAULT_PARAMETERS",
    "PAPER_SLERP_PARAMETERS",
    "Candidate",
    "GreedySearch",
    "GreedySettings",
    "Original",
    "SearchBackend",
    "SearchResult",
    "recipe_hash",
    "run_greedy",
]
