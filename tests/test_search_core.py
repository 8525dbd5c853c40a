"""The search core on constructed backends: registry, baselines, settings refused before scoring."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest

from hub_merge.errors import ConfigError, UnknownMethodError
from hub_merge.merge.recipe import MergeRecipe
from hub_merge.search import GreedySettings, Strategy, register_strategy, run_greedy, run_strategy
from hub_merge.search.strategy import STRATEGIES, get_strategy, settings_from_dict
from tests.test_search_greedy import VECTORS, VectorBackend, originals


class Counting(VectorBackend):
    """A vector backend whose kinship to some experts (themselves, not merges) is unknown."""

    def __init__(self, vectors, nan_for=()):
        super().__init__(vectors)
        self.nan_for = set(nan_for)

    def kinship(self, a: MergeRecipe, b: MergeRecipe) -> float:
        if {a.canonical_json(), b.canonical_json()} & {
            MergeRecipe.leaf(s).canonical_json() for s in self.nan_for
        }:
            self.kinship_calls += 1
            return math.nan
        return super().kinship(a, b)


def test_unknown_strategy_and_foreign_settings_are_one_line_errors():
    with pytest.raises(ConfigError, match="Unknown search strategy 'annealing'.*greedy"):
        get_strategy("annealing")
    with pytest.raises(ConfigError, match="'popsize' is not a setting of strategy 'greedy'"):
        settings_from_dict("greedy", {"popsize": 8})
    backend = VectorBackend(VECTORS)
    with pytest.raises(ConfigError, match="not a setting"):
        run_strategy(originals(), backend, "greedy", {"k": 2, "sigma": 0.1}, progress=False)
    assert backend.evaluated == []


def test_registry_refuses_a_second_strategy_of_the_same_name():
    @dataclass
    class Nothing:
        pass

    class Twin(Strategy):
        name = "greedy"
        settings_type = Nothing

        def ask(self):
            return []

        def tell(self, recipes, fitness):
            pass

    with pytest.raises(ValueError, match="already registered"):
        register_strategy(Twin)
    assert STRATEGIES["greedy"] is not Twin


def test_bad_method_parameters_and_budget_fail_before_anything_is_scored():
    backend = VectorBackend(VECTORS)
    with pytest.raises(UnknownMethodError, match="Unknown merge method 'slerpy'"):
        run_greedy(originals(), backend, {"method": "slerpy"}, progress=False)
    with pytest.raises(UnknownMethodError, match="Unknown parameter.*density"):
        run_greedy(originals(), backend, {"parameters": {"density": 0.5}}, progress=False)
    # four experts: 4 + 1 baselines and 6 pairs in generation 1
    with pytest.raises(ConfigError, match="budget 8 is below one generation.*at least 11"):
        run_greedy(originals(), backend, {"k": 2}, budget=8, progress=False)
    assert backend.evaluated == []


def test_budget_stops_the_search_between_generations():
    result = run_greedy(
        originals(),
        VectorBackend(VECTORS),
        GreedySettings(k=3, generations=10, kinship_stop=None, patience=10),
        budget=13,
        progress=False,
    )
    assert result.stop_reason == "budget of 13 evaluations spent"
    assert result.evaluations <= 13 and result.generations == 1


def test_baselines_are_scored_first_and_the_uniform_average_can_win():
    class UniformIsBest(VectorBackend):
        def evaluate(self, recipe):
            self.evaluated.append(recipe.recipe_hash())
            return {"a": 0.0 if recipe.method == "linear" else 1.0}

    backend = UniformIsBest(VECTORS)
    result = run_greedy(originals(), backend, {"k": 2, "generations": 2}, progress=False)
    tree = result.tree
    assert [n.id for n in tree.baselines()] == ["ea", "eb", "ec", "ed", "uniform"]
    assert tree.generations[0].evaluations == 5 and len(backend.evaluated) > 5
    uniform = tree.nodes["uniform"]
    assert uniform.parents == ["ea", "eb", "ec", "ed"] and uniform.recipe["method"] == "linear"
    assert result.winner == "uniform"  # never worse than the one-shot average on dev


def test_kinship_stop_default_depends_on_the_metric():
    assert GreedySettings().resolved_kinship_stop("pearson") == 0.9
    assert GreedySettings().resolved_kinship_stop("cosine") == 0.9
    assert GreedySettings().resolved_kinship_stop("euclidean") is None
    assert GreedySettings(kinship_stop=3.0).resolved_kinship_stop("euclidean") == 3.0
    assert GreedySettings(kinship_guided=False).resolved_kinship_stop("pearson") is None
    with pytest.raises(ConfigError, match="kinship_stop"):
        GreedySettings(kinship_stop="high")


def test_a_nan_kinship_is_unknown_and_never_the_exploration_partner():
    # eb's kinship cannot be measured; it is the partner exploration picks when it can (see
    # below), and a NaN compared as the smallest value would make it the pick every time
    measured = run_greedy(
        originals(),
        Counting(VECTORS),
        GreedySettings(k=2, generations=4, kinship_stop=None, patience=10),
        progress=False,
    )
    partners = [
        measured.tree.nodes[g.children[-1]].parents[-1]
        for g in measured.tree.generations[2:]
        if g.note == "exploitation + exploration"
    ]
    assert "eb" in partners
    backend = Counting(VECTORS, nan_for={"src/eb"})
    result = run_greedy(
        originals(),
        backend,
        GreedySettings(k=2, generations=4, kinship_stop=None, patience=10),
        progress=False,
    )
    explored = [
        result.tree.nodes[g.children[-1]].parents
        for g in result.tree.generations[2:]
        if g.note == "exploitation + exploration"
    ]
    assert explored and all("eb" not in parents for parents in explored)


class RowsBackend(VectorBackend):
    """A vector backend scored through a real :class:`Evaluator` over given rows (its ``key``)."""

    def __init__(self, vectors, evaluator):
        super().__init__(vectors)
        self.evaluator = evaluator


def _evaluator(tokenizer, rows: list[tuple[str, str]]):
    from hub_merge.evaluate import Evaluator
    from hub_merge.evaluate.tasks import Example, Task

    return Evaluator([Task("a", tuple(Example(p, a) for p, a in rows))], tokenizer)


def test_a_cache_copied_into_a_run_on_other_rows_is_never_reused(tiny_zoo, tmp_path):
    # issue 23: the benchmark copies caches between run folders; a score is of some rows, so a
    # copied entry may only answer for a run on the same rows, metric and weights
    import shutil

    from transformers import AutoTokenizer

    from hub_merge.search import RunFolder

    tok = AutoTokenizer.from_pretrained(tiny_zoo.base)
    rows = [("1+1=", "2"), ("2+2=", "4")]
    settings = GreedySettings(k=2, generations=2, kinship_stop=None)

    def run(folder, ev_rows, **kw):
        backend = RowsBackend(VECTORS, _evaluator(tok, ev_rows))
        run_greedy(
            originals(), backend, settings, run=RunFolder(folder, {"s": 1}), progress=False, **kw
        )
        return backend

    first = run(tmp_path / "first", rows)
    assert len(first.evaluated) > 5
    for name, other_rows, kw, reused in [
        ("same", rows, {}, True),
        ("other_rows", [("1+1=", "2"), ("3+3=", "6")], {}, False),
        ("fewer_rows", rows[:1], {}, False),
        ("other_weights", rows, {"weights": {"a": 2.0}}, False),
        ("other_combine", rows, {"combine": "harmonic"}, False),
    ]:
        folder = tmp_path / name
        folder.mkdir()
        for cache in ("scores.json", "kinship.json"):
            shutil.copy(tmp_path / "first" / cache, folder / cache)
        again = run(folder, other_rows, **kw)
        if reused:
            assert again.evaluated == [], name
        else:  # every baseline scored again, none answered from the copied cache
            assert again.evaluated[:5] == first.evaluated[:5], name
            if not kw:  # same decisions (the vector scores ignore rows): the whole run again
                assert again.evaluated == first.evaluated, name
