"""``--strategy evolve`` (CMA-ES over merge genes) on a constructed backend and on the tiny zoo."""

from __future__ import annotations

import json
import math

import pytest

from hub_merge.errors import ConfigError
from hub_merge.merge.recipe import MergeRecipe
from hub_merge.search import Original, RunFolder, run_strategy
from hub_merge.search.strategies.evolve import EvolveSettings

NAMES = ["ea", "eb", "ec", "ed"]
TARGET = {"src/ea": 0.9, "src/eb": 0.1, "src/ec": 0.6, "src/ed": 0.0}  # best weights, per expert
LAYERS = [".layers.0.", ".layers.1.", ".layers.2.", ".layers.3."]


def experts():
    return [Original(name=n, source=f"src/{n}", path=f"/models/{n}") for n in NAMES]


def _mean(setting) -> float:
    if isinstance(setting, list):  # layer-group conditions: each layer's value, then the rest
        values = [c.value for c in setting if c.filter is not None]
        return sum(values) / len(values)
    return float(setting)


class WeightBackend:
    """Loss = distance of each expert's weight to a target (density adds a small penalty).

    The uniform merge (every weight 1/N) is far from the target, so a search that learns from
    its samples must beat it. ``interrupt_after`` raises Ctrl-C at that many evaluations.
    """

    def __init__(self, interrupt_after: int | None = None) -> None:
        self.evaluated: list[str] = []
        self.interrupt_after = interrupt_after

    def evaluate(self, recipe: MergeRecipe) -> dict[str, float]:
        if self.interrupt_after is not None and len(self.evaluated) >= self.interrupt_after:
            raise KeyboardInterrupt
        self.evaluated.append(recipe.recipe_hash())
        if recipe.is_leaf:
            return {"t": 1.0 + sum(TARGET.values())}
        if recipe.method == "linear" and all(
            e.parameters.get("weight") == 1.0 for e in recipe.models
        ):
            weights = {e.model: 1.0 / len(recipe.models) for e in recipe.models}  # the average
        else:
            weights = {e.model: _mean(e.parameters["weight"]) for e in recipe.models}
        loss = sum((weights.get(s, 0.0) - t) ** 2 for s, t in TARGET.items())
        density = [_mean(e.parameters.get("density", 1.0)) for e in recipe.models]
        return {"t": loss + 0.01 * sum(1 - d for d in density)}


def run(backend, settings=None, **kw):
    return run_strategy(experts(), backend, "evolve", settings or {}, progress=False, seed=3, **kw)


def test_cma_es_beats_the_uniform_merge_within_its_budget():
    backend = WeightBackend()
    result = run(backend, {"method": "ties"}, budget=100)
    tree = result.tree
    popsize = 4 + math.floor(3 * math.log(8))  # 4 experts x (weight, density)
    assert result.evaluations == len(backend.evaluated) <= 100
    assert result.stop_reason == "budget of 100 evaluations spent"
    gens = tree.generations[1:]
    assert gens and all(len(g.children) == popsize for g in gens)
    assert len(gens) == (100 - 5) // popsize
    winner = tree.nodes[result.winner]
    assert winner.fitness > tree.nodes["uniform"].fitness + 0.2  # learned, not just sampled
    # every candidate is a lineage node whose recipe holds its genes (mapped into the ranges)
    for child in gens[0].children:
        node = tree.nodes[child]
        assert node.method == "ties" and node.parents == NAMES and node.recipe["base"] == "base"
        for entry in node.recipe["models"]:
            assert 0.0 <= entry["parameters"]["weight"] <= 1.0
            assert 0.1 <= entry["parameters"]["density"] <= 1.0
    # generation summaries carry the population's spread
    stats = gens[-1].stats
    assert stats["min"] <= stats["mean"] <= stats["max"] and stats["std"] >= 0 and stats["sigma"]
    assert gens[-1].best_fitness == max(g.best_fitness for g in gens)


def test_x0_is_the_uniform_merge_and_weight_only_methods_have_no_density():
    backend = WeightBackend()
    result = run(backend, {"method": "task_arithmetic", "generations": 1})
    tree = result.tree
    children = [tree.nodes[c] for c in tree.generations[1].children]
    assert len(children) == 4 + math.floor(3 * math.log(4))
    weights = [[e["parameters"]["weight"] for e in c.recipe["models"]] for c in children]
    mean = [sum(col) / len(col) for col in zip(*weights, strict=True)]
    assert all(abs(m - 0.25) < 0.15 for m in mean)  # samples around 1/N, sigma 1/6
    assert all("density" not in e["parameters"] for c in children for e in c.recipe["models"])
    assert result.stop_reason == "max generations reached"


def test_layer_groups_give_each_block_of_layers_its_own_genes():
    backend = WeightBackend()
    result = run(
        backend, {"method": "dare_ties", "layer_groups": 2, "generations": 1}, layers=LAYERS
    )
    node = result.tree.nodes[result.tree.generations[1].children[0]]
    recipe = MergeRecipe.from_dict(node.recipe)
    assert recipe.seed == 3  # DARE's masks are fixed by the run seed
    weight = recipe.models[0].parameters["weight"]
    assert [c.filter for c in weight] == [*LAYERS, None]
    assert weight[0].value == weight[1].value and weight[2].value == weight[3].value
    assert math.isclose(weight[4].value, (weight[0].value + weight[2].value) / 2, abs_tol=1e-6)
    assert len(result.tree.generations[1].children) == 4 + math.floor(3 * math.log(16))


def test_bad_settings_are_refused_before_anything_is_scored():
    backend = WeightBackend()
    with pytest.raises(ConfigError, match="budget 10 is below one generation"):
        run(backend, budget=10)
    with pytest.raises(ConfigError, match="more than the model's 4 layers"):
        run(backend, {"layer_groups": 5}, layers=LAYERS)
    with pytest.raises(ConfigError, match="'k' is not a setting of strategy 'evolve'.*greedy"):
        run(backend, {"k": 3})
    with pytest.raises(ConfigError, match="method must be one of"):
        EvolveSettings(method="slerp")
    with pytest.raises(ConfigError, match="weight_max"):
        EvolveSettings(weight_min=1.0, weight_max=0.5)
    assert backend.evaluated == []


def test_interrupted_run_resumes_by_replay_to_the_same_winner(tmp_path):
    reference = run(WeightBackend(), budget=60)
    first = WeightBackend(interrupt_after=23)
    with pytest.raises(KeyboardInterrupt):
        run(first, run=RunFolder(tmp_path / "run", {"s": 1}), budget=60)
    assert len(json.loads((tmp_path / "run" / "scores.json").read_text())) == 23
    second = WeightBackend()
    resumed = run(second, run=RunFolder(tmp_path / "run", {"s": 1}, resume=True), budget=60)
    assert not set(first.evaluated) & set(second.evaluated)  # nothing scored twice
    assert resumed.evaluations == reference.evaluations - 23
    assert resumed.winner == reference.winner
    assert resumed.winner_node.recipe == reference.winner_node.recipe
    # a finished run resumed asks the same candidates and evaluates none of them
    third = WeightBackend()
    again = run(third, run=RunFolder(tmp_path / "run", {"s": 1}, resume=True), budget=60)
    assert third.evaluated == [] and again.evaluations == 0 and again.winner == reference.winner
    # a larger budget continues where the run stopped
    fourth = WeightBackend()
    longer = run(fourth, run=RunFolder(tmp_path / "run", {"s": 1}, resume=True), budget=80)
    assert 0 < longer.evaluations == len(fourth.evaluated) <= 20


# --- on the tiny zoo, through the real engine -----------------------------------------------


def test_evolve_from_the_cli_on_the_tiny_zoo_resumes_with_zero_evaluations(
    tiny_zoo, tmp_path, capsys
):
    from hub_merge.cli import main
    from hub_merge.lineage import FamilyTree

    names = ["add", "reverse", "sort"]
    args = ["search", "--strategy", "evolve", "--base", str(tiny_zoo.base), "--experts"]
    args += [str(tiny_zoo.experts[n]) for n in names] + ["--tasks"]
    args += [str(tiny_zoo.tasks[n]) for n in names]
    args += ["--method", "dare_ties", "--layer-groups", "2", "--budget", "26", "--limit", "4"]
    args += ["--device", "cpu", "--out", str(tmp_path / "run")]
    assert main([*args, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    popsize = 4 + math.floor(3 * math.log(2 * 3 * 2))  # 2 groups x 3 experts x 2 genes
    assert data["strategy"] == "evolve" and data["evaluations"] == 4 + 2 * popsize <= 26
    assert set(data["baselines"]) == {*names, "uniform"}
    assert all(b["test_scores"] for b in data["baselines"].values()) and data["test_scores"]
    tree = FamilyTree.load(tmp_path / "run" / "family_tree.json")
    child = tree.nodes[tree.generations[1].children[0]]
    assert child.method == "dare_ties" and child.recipe["seed"] == 0
    assert isinstance(child.recipe["models"][0]["parameters"]["weight"], list)  # per group
    assert (tmp_path / "run" / "winner" / "config.json").is_file()
    assert (tmp_path / "run" / "fitness.png").stat().st_size > 1000
    # the card's command reruns this search: evolve's own flags, none of greedy's
    from hub_merge.card import build_card

    text = build_card(tree, repo_id="me/evolved").text
    assert "--strategy evolve" in text and "--layer-groups 2" in text and "--budget 26" in text
    # dare_ties is the default method: the command needs no --method to rerun it
    assert "--method" not in text and "--k " not in text and "--kinship-stop" not in text
    assert "Evolutionary merging" in text and "2403.13187" in text
    assert all({"mean", "std", "min", "max"} <= set(g.stats) for g in tree.generations[1:])
    assert main([*args, "--json", "--resume"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["evaluations"] == 0 and again["winner"] == data["winner"]
    # the human summary puts the winner beside the baselines, with test scores
    assert main([*args, "--resume"]) == 0
    out = capsys.readouterr().out
    assert "Winner (evolve)" in out and "uniform" in out and "Test rows" in out
    # a greedy setting is refused for evolve, in one line, before anything runs
    assert main([*args, "--resume", "--k", "3"]) == 2
    assert "--k is a setting of strategy greedy" in capsys.readouterr().err


def test_default_is_dare_ties_with_genes_per_group_of_four_layers_at_most_eight():
    # Akiba et al.: DARE-TIES, weight and density genes per layer (here per block of 4 layers)
    assert EvolveSettings().method == "dare_ties" and EvolveSettings().bounds == "clip"
    layers = [f".layers.{i}." for i in range(12)]
    result = run(WeightBackend(), {"generations": 1}, layers=layers)
    children = [result.tree.nodes[c] for c in result.tree.generations[1].children]
    assert len(children) == 4 + math.floor(3 * math.log(3 * 4 * 2))  # 3 groups x 4 x 2 genes
    recipe = MergeRecipe.from_dict(children[0].recipe)
    assert recipe.method == "dare_ties" and recipe.seed == 3
    for entry in recipe.models:
        for name in ("weight", "density"):
            setting = entry.parameters[name]
            assert [c.filter for c in setting] == [*layers, None]
            values = [c.value for c in setting[:-1]]
            assert values[0:4] == [values[0]] * 4 and values[8:12] == [values[8]] * 4
    assert EvolveSettings().groups(30) == 8 and EvolveSettings().groups(40) == 8
    assert EvolveSettings().groups(2) == 1 and EvolveSettings(layer_groups=1).groups(30) == 1


def test_abs_bounds_read_unbounded_genes_as_mergekit_evolve_does():
    from hub_merge.search.strategies.evolve import EvolveStrategy
    from hub_merge.search.strategy import StrategyContext

    ctx = StrategyContext(base="@base", experts=experts(), seed=0)
    clip = EvolveStrategy(EvolveSettings(method="ties", layer_groups=1), ctx)
    absolute = EvolveStrategy(EvolveSettings(method="ties", layer_groups=1, bounds="abs"), ctx)
    genes = [-0.3, -0.2, 1.7, 1.4, 0.5, 0.5, 0.1, 0.9]
    weights = lambda r: [e.parameters["weight"] for e in r.models]  # noqa: E731
    densities = lambda r: [e.parameters["density"] for e in r.models]  # noqa: E731
    assert weights(clip.recipe(genes)) == [0.0, 1.0, 0.5, 0.1]
    assert weights(absolute.recipe(genes)) == [0.3, 1.7, 0.5, 0.1]  # |g|, uncapped
    assert densities(absolute.recipe(genes)) == pytest.approx([0.1 + 0.2 * 0.9, 1.0, 0.55, 0.91])
    absolute.prepare()
    assert absolute.es.opts["bounds"] == [None, None]
    with pytest.raises(ConfigError, match="bounds must be one of clip, abs"):
        EvolveSettings(bounds="reflect")
