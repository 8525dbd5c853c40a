"""The greedy search on constructed backends: its rules, caching, lineage, resume and stops."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from hub_merge.errors import ConfigError, SearchStateError
from hub_merge.merge.recipe import MergeRecipe
from hub_merge.search import GreedySettings, Original, RunFolder, run_greedy

TASKS = ["a", "b", "c"]


class VectorBackend:
    """Each expert is a vector; a merge averages its parents' vectors (like SLERP at t=0.5).

    Task j's "loss" is 1 - sqrt(v[j]) (concave), so a balanced mix of the experts beats every
    single expert: the fitness improves only by merging. Kinship is the cosine of the vectors
    (task vectors relative to a zero base), as the real backend measures it.
    """

    def __init__(
        self, vectors: dict[str, list[float]], *, interrupt_after: int | None = None
    ) -> None:
        self.vectors = {
            f"src/{k}": torch.tensor(v, dtype=torch.float64) for k, v in vectors.items()
        }
        self.evaluated: list[str] = []
        self.kinship_calls = 0
        self.interrupt_after = interrupt_after

    def vector(self, recipe: MergeRecipe | str) -> torch.Tensor:
        if isinstance(recipe, str):
            return self.vectors[recipe]
        if recipe.is_leaf:
            return self.vector(recipe.models[0].model)
        base = [] if recipe.base in (None, "@base") else [recipe.base]
        parts = base + [e.model for e in recipe.models]
        return torch.stack([self.vector(p) for p in parts]).mean(0)

    def evaluate(self, recipe: MergeRecipe) -> dict[str, float]:
        if self.interrupt_after is not None and len(self.evaluated) >= self.interrupt_after:
            raise KeyboardInterrupt
        self.evaluated.append(recipe.recipe_hash())
        v = self.vector(recipe).clamp(min=0)
        return {t: float(1 - v[j].sqrt()) for j, t in enumerate(TASKS)}

    def kinship(self, a: MergeRecipe, b: MergeRecipe) -> float:
        self.kinship_calls += 1
        return float(torch.nn.functional.cosine_similarity(self.vector(a), self.vector(b), dim=0))


VECTORS = {
    "ea": [1.0, 0.0, 0.0, 0.3, 0.0],
    "eb": [0.0, 1.0, 0.0, 0.0, 0.3],
    "ec": [0.0, 0.0, 1.0, 0.2, 0.2],
    "ed": [0.9, 0.1, 0.0, 0.3, 0.0],  # a near-twin of ea: high kinship with it
}


def originals(names=("ea", "eb", "ec", "ed")) -> list[Original]:
    return [Original(name=n, source=f"src/{n}", path=f"/models/{n}") for n in names]


def test_finds_the_merge_when_fitness_only_improves_by_merging():
    backend = VectorBackend(VECTORS)
    result = run_greedy(
        originals(), backend, GreedySettings(k=3, generations=5, kinship_stop=None), progress=False
    )
    tree = result.tree
    best_expert = max(n.fitness for n in tree.experts())
    winner = result.winner_node
    assert winner.kind == "merge"
    assert winner.fitness > best_expert
    # the winner mixes the three distinct skills (ed is a near-twin of ea)
    origins = {n.id for n in tree.originals(winner.id)}
    assert {"eb", "ec"} <= origins and origins & {"ea", "ed"}


def test_lineage_is_complete_and_consistent(tmp_path):
    backend = VectorBackend(VECTORS)
    run = RunFolder(tmp_path / "run", {"x": 1})
    result = run_greedy(
        originals(),
        backend,
        GreedySettings(k=3, generations=4),
        run=run,
        tasks=TASKS,
        progress=False,
    )
    saved = json.loads((tmp_path / "run" / "family_tree.json").read_text())
    assert saved["winner"] == result.winner
    tree = run.load_tree()
    tree.validate()
    for node in tree.nodes.values():
        assert all(p in tree.nodes for p in node.parents)
        assert set(node.scores) == set(TASKS) and node.fitness is not None
        if node.kind == "expert":
            assert node.path and not node.parents and node.generation == 0
        elif node.id == "uniform":  # the core's baseline: the linear average of every expert
            assert node.method == "linear" and node.parents == ["ea", "eb", "ec", "ed"]
            assert node.baseline == "uniform" and node.generation == 0
        else:
            pa, pb = (tree.nodes[p] for p in node.parents)
            assert node.method == "slerp" and node.recipe["base"] == pa.id
            assert node.recipe["models"][0]["model"] == pb.id
            assert math.isclose(node.merge_gain, node.fitness - (pa.fitness + pb.fitness) / 2)
            assert node.parent_kinship is not None and node.generation >= 1
            assert max(pa.generation, pb.generation) < node.generation
            # the fitter parent is SLERP's base model
            assert pa.fitness >= pb.fitness
    # generation 1 merged every pair of experts
    gen1 = {frozenset(tree.nodes[c].parents) for c in tree.generations[1].children}
    assert gen1 == {frozenset(p) for p in itertools.combinations(["ea", "eb", "ec", "ed"], 2)}
    # no pair was merged twice, and each recipe was scored once
    pairs = [frozenset(n.parents) for n in tree.merges() if n.id != "uniform"]
    assert len(pairs) == len(set(pairs))
    assert len(backend.evaluated) == len(set(backend.evaluated)) == len(tree.nodes)


def test_exploration_picks_the_lowest_kinship_partner_in_the_whole_pool():
    backend = VectorBackend(VECTORS)
    settings = GreedySettings(k=2, generations=4, kinship_stop=None, patience=10)
    result = run_greedy(originals(), backend, settings, progress=False)
    tree = result.tree
    explored = 0
    order = list(tree.nodes)
    for prev, record in zip(tree.generations[1:], tree.generations[2:], strict=False):
        best = prev.top[0]
        # greedy's pool: the experts and its own children (the uniform baseline is not merged)
        snapshot = [
            n for n in order[: order.index(prev.children[-1]) + 1] if n not in (best, "uniform")
        ]
        kin = {m: backend.kinship(result.recipes[best], result.recipes[m]) for m in snapshot}
        far = min(kin, key=kin.get)
        parent_sets = {frozenset(tree.nodes[c].parents) for c in record.children}
        earlier = {frozenset(n.parents) for n in tree.merges() if n.generation < record.generation}
        assert frozenset((best, far)) in parent_sets or frozenset((best, far)) in earlier
        explored += frozenset((best, far)) in parent_sets
    assert explored >= 1
    # vanilla mode never explores outside the top
    vanilla = run_greedy(
        originals(),
        VectorBackend(VECTORS),
        GreedySettings(k=2, generations=4, kinship_guided=False, kinship_stop=None, patience=10),
        progress=False,
    )
    for prev, record in zip(
        vanilla.tree.generations[1:], vanilla.tree.generations[2:], strict=False
    ):
        for c in record.children:
            assert set(vanilla.tree.nodes[c].parents) <= set(prev.top)


def test_kinship_early_stop_fires_when_threshold_crossed():
    free = run_greedy(
        originals(),
        VectorBackend(VECTORS),
        GreedySettings(k=3, generations=6, kinship_stop=None, patience=10),
        progress=False,
    )
    kin = [g.top_kinship for g in free.tree.generations[1:]]
    # first generation whose top kinship exceeds all earlier ones
    g = next(i for i in range(1, len(kin)) if kin[i] > max(kin[:i]))
    threshold = (kin[g] + max(kin[:g])) / 2
    stopped = run_greedy(
        originals(),
        VectorBackend(VECTORS),
        GreedySettings(k=3, generations=6, kinship_stop=threshold, patience=10),
        progress=False,
    )
    assert stopped.generations == g + 1
    assert "kinship" in stopped.stop_reason
    assert stopped.tree.generations[-1].top_kinship > threshold
    assert all(r.top_kinship <= threshold for r in stopped.tree.generations[1:-1])


class TargetBackend(VectorBackend):
    """Loss = distance to the mix of ea and eb, plus a penalty for merges of merges.

    So the generation-1 merge of ea and eb is optimal and no later child enters the top-k.
    """

    def evaluate(self, recipe: MergeRecipe) -> dict[str, float]:
        self.evaluated.append(recipe.recipe_hash())
        target = (self.vectors["src/ea"] + self.vectors["src/eb"]) / 2
        d = (self.vector(recipe) - target).abs()
        depth = recipe.canonical_json().count("method")
        return {t: float(d[j]) + (1.0 if depth > 1 else 0.0) for j, t in enumerate(TASKS)}


def test_stops_when_top_unchanged_or_no_improvement_or_max_generations():
    result = run_greedy(
        originals(),
        TargetBackend(VECTORS),
        GreedySettings(k=3, generations=20, kinship_stop=None, patience=50),
        progress=False,
    )
    assert set(result.winner_node.parents) == {"ea", "eb"}
    assert result.stop_reason == "top-k unchanged"
    assert result.generations == 2
    assert result.tree.generations[-1].top == result.tree.generations[-2].top

    # the fitness creeps up forever here, with a changing top: patience stops it
    patient = run_greedy(
        originals(),
        VectorBackend(VECTORS),
        GreedySettings(k=3, generations=50, kinship_stop=None, patience=2),
        progress=False,
    )
    assert patient.stop_reason == "no improvement for 2 generations"
    best = [g.best_fitness for g in patient.tree.generations]
    assert best[-1] == best[-2] == best[-3] and best[-3] > best[-4]

    capped = run_greedy(
        originals(), VectorBackend(VECTORS), GreedySettings(k=3, generations=1), progress=False
    )
    assert capped.generations == 1 and capped.stop_reason == "max generations reached"
    assert max(n.generation for n in capped.tree.nodes.values()) == 1


def test_resume_after_interrupt_reevaluates_nothing(tmp_path):
    settings = GreedySettings(k=3, generations=4, kinship_stop=None, patience=10)
    reference = run_greedy(originals(), VectorBackend(VECTORS), settings, progress=False)

    first = VectorBackend(VECTORS, interrupt_after=9)
    with pytest.raises(KeyboardInterrupt):
        run_greedy(
            originals(), first, settings, run=RunFolder(tmp_path / "run", {"s": 1}), progress=False
        )
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["status"] == "interrupted"
    assert len(json.loads((tmp_path / "run" / "scores.json").read_text())) == 9

    second = VectorBackend(VECTORS)
    resumed = run_greedy(
        originals(),
        second,
        settings,
        run=RunFolder(tmp_path / "run", {"s": 1}, resume=True),
        progress=False,
    )
    assert not set(first.evaluated) & set(second.evaluated)
    assert resumed.evaluations == len(reference.tree.nodes) - 9
    assert resumed.winner == reference.winner
    assert [g.top for g in resumed.tree.generations] == [g.top for g in reference.tree.generations]

    # resuming a finished run replays from the caches: nothing scored, no kinship measured
    third = VectorBackend(VECTORS)
    again = run_greedy(
        originals(),
        third,
        settings,
        run=RunFolder(tmp_path / "run", {"s": 1}, resume=True),
        progress=False,
    )
    assert third.evaluated == [] and third.kinship_calls == 0 and again.evaluations == 0
    assert again.winner == reference.winner


def test_run_folder_refuses_other_settings_and_overwrites(tmp_path):
    RunFolder(tmp_path / "run", {"k": 3, "method": "slerp"})
    with pytest.raises(SearchStateError, match="different settings.*k"):
        RunFolder(tmp_path / "run", {"k": 4, "method": "slerp"}, resume=True)
    with pytest.raises(SearchStateError, match="--resume"):
        RunFolder(tmp_path / "run", {"k": 3, "method": "slerp"})
    with pytest.raises(SearchStateError, match="No search to resume"):
        RunFolder(tmp_path / "other", {"k": 3}, resume=True)


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="k must be at least 2"):
        GreedySettings(k=1)
    with pytest.raises(ConfigError, match="at least two experts"):
        run_greedy(originals(("ea",)), VectorBackend(VECTORS), progress=False)
    with pytest.raises(ConfigError, match="kinship_metric"):
        run_greedy(originals(), VectorBackend(VECTORS), kinship_metric="manhattan")


def test_hub_originals_carry_repo_and_sha_in_the_lineage(tmp_path):
    from hub_merge.hub import PulledModel
    from hub_merge.refs import ModelRef
    from hub_merge.search.resolve import original_expert, unique_names

    sha = "a" * 40
    pulled = [
        PulledModel(
            ref=ModelRef.parse("org/ea"), path=tmp_path, kind="full", repo_id="org/ea", revision=sha
        ),
        PulledModel(
            ref=ModelRef.parse("other/ea"),
            path=tmp_path,
            kind="adapter",
            repo_id="other/ea",
            revision=sha,
        ),
    ]
    names = unique_names(pulled)
    assert names == ["ea", "ea-2"]
    origs = [original_expert(p, n) for p, n in zip(pulled, names, strict=True)]
    assert origs[0].source == f"org/ea@{sha}" and origs[0].path is None and origs[1].is_adapter
    backend = VectorBackend({})
    backend.vectors = {
        o.source: torch.tensor(VECTORS[v]) for o, v in zip(origs, ["ea", "eb"], strict=True)
    }
    tree = run_greedy(origs, backend, GreedySettings(k=2, generations=1), progress=False).tree
    tree.validate()
    assert tree.nodes["ea"].source == f"org/ea@{sha}" and tree.nodes["ea-2"].repo_id == "other/ea"
