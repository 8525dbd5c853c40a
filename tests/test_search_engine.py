"""The greedy search wired to the real merge engine, kinship and evaluator, on the tiny zoo."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hub_merge.cli import main
from hub_merge.errors import ConfigError, SearchStateError
from hub_merge.evaluate import Evaluator, load_tasks
from hub_merge.kinship import kinship_matrix
from hub_merge.lineage import FamilyTree
from hub_merge.merge.recipe import MergeRecipe, ModelEntry
from hub_merge.search import SearchConfig, greedy_search
from hub_merge.splits import split_tasks

GREEDY = {"k", "generations", "method", "parameters", "kinship_stop", "kinship_guided", "patience"}


def config(zoo, out, **kw) -> SearchConfig:
    names = kw.pop("names", ["add", "reverse", "uppercase"])
    models = kw.pop("models", zoo.experts)
    settings = {"k": 3, "generations": 2, "kinship_stop": None}
    settings.update({k: kw.pop(k) for k in list(kw) if k in GREEDY})
    return SearchConfig(
        base=str(zoo.base),
        experts=[str(models[n]) for n in names],
        tasks=[str(zoo.tasks[n]) for n in names],
        out=str(out),
        device="cpu",
        progress=False,
        settings=settings,
        **{"limit": 8, **kw},
    )


@pytest.fixture(scope="module")
def finished(tiny_zoo, tmp_path_factory):
    out = tmp_path_factory.mktemp("search") / "run"
    return out, greedy_search(config(tiny_zoo, out))


def test_search_runs_end_to_end_with_complete_lineage(tiny_zoo, finished):
    out, result = finished
    for name in (
        "state.json",
        "scores.json",
        "kinship.json",
        "family_tree.json",
        "fitness.png",
        "family_tree.png",
        "recipes.json",
    ):
        assert (out / name).is_file(), name
    tree = FamilyTree.load(out / "family_tree.json")
    tree.validate()
    assert tree.winner == result.winner and tree.base == "base"
    assert {n.name for n in tree.experts()} == {"add", "reverse", "uppercase"}
    assert [n.id for n in tree.baselines()] == ["add", "reverse", "uppercase", "uniform"]
    for node in tree.nodes.values():
        assert all(p in tree.nodes for p in node.parents)
        if node.kind == "expert":
            assert node.path == str(tiny_zoo.experts[node.name].resolve()) and node.repo_id is None
        if node.kind == "merge" and node.id != "uniform":
            assert node.method == "slerp" and node.parameters["t"][0]["filter"] == "self_attn"
            assert (
                node.merge_gain is not None and node.parent_kinship is not None and node.recipe_hash
            )
    # generation 1 merged every pair of the three experts
    assert len(tree.generations[1].children) == 3
    assert len(tree.kinship_matrix) == 3 and tree.kinship_matrix[0][0] == 1.0
    # scores were cached once per node
    assert (
        len(json.loads((out / "scores.json").read_text())) == len(tree.nodes) - 1
    )  # minus the base
    assert result.evaluations == len(tree.nodes) - 1


def test_winner_folder_scores_what_the_search_measured_in_memory(tiny_zoo, finished):
    out, result = finished
    tok = AutoTokenizer.from_pretrained(out / "winner")
    model = AutoModelForCausalLM.from_pretrained(out / "winner", dtype=torch.float32)
    split = split_tasks([tiny_zoo.tasks[n] for n in ("add", "reverse", "uppercase")], limit=8)
    dev, test = Evaluator(split.dev, tok).score(model), Evaluator(split.test, tok).score(model)
    for task, value in result.winner_node.scores.items():  # the fitness: dev rows only
        assert math.isclose(dev[task], value, rel_tol=1e-4), task
    held_out = result.tree.test_scores[result.winner]
    for task, value in held_out.items():  # reported: test rows, which the search never read
        assert math.isclose(test[task], value, rel_tol=1e-4), task
    assert set(result.tree.test_scores) == {result.winner, "add", "reverse", "uppercase", "uniform"}
    assert result.tree.split["kind"] == "fraction" and result.tree.split["test_fraction"] == 0.3


def test_parent_kinship_is_the_kinship_of_the_parents(tiny_zoo, finished):
    _, result = finished
    tree = result.tree
    child = next(n for n in tree.merges() if n.generation == 1)
    a, b = (tiny_zoo.experts[p] for p in child.parents)
    direct = kinship_matrix([a, b], tiny_zoo.base, "pearson", device="cpu").pair(0, 1)
    assert math.isclose(child.parent_kinship, direct, rel_tol=1e-5)
    # later generations record their parents' kinship too (merged state dicts minus the base)
    later = [n for n in tree.merges() if n.generation == 2]
    assert all(n.parent_kinship is not None for n in later)


def test_resume_evaluates_only_new_nodes_and_refuses_other_settings(tiny_zoo, finished, tmp_path):
    out, first = finished
    import shutil

    run = tmp_path / "run"
    shutil.copytree(out, run)
    again = greedy_search(config(tiny_zoo, run, resume=True))
    assert again.evaluations == 0 and again.kinship_computed == 0
    assert again.winner == first.winner
    further = greedy_search(config(tiny_zoo, run, resume=True, generations=3))
    new = [n for n in further.tree.nodes.values() if n.generation == 3]
    assert further.evaluations == len(new)
    with pytest.raises(SearchStateError, match="different settings"):
        greedy_search(config(tiny_zoo, run, resume=True, k=2))
    with pytest.raises(SearchStateError, match="--resume"):
        greedy_search(config(tiny_zoo, run))


def test_adapters_can_be_searched(tiny_zoo, tmp_path):
    result = greedy_search(
        config(
            tiny_zoo,
            tmp_path / "run",
            models=tiny_zoo.adapters,
            names=["add", "sort"],
            k=2,
            generations=1,
            materialize=[],
        )
    )
    tree = result.tree
    assert all(n.is_adapter for n in tree.experts())
    assert [n.id for n in tree.merges()] == ["uniform", "g1-1"]
    assert result.winner_path is None


def test_cli_search_json_and_errors(tiny_zoo, tmp_path, capsys):
    args = [
        "search",
        "--base",
        str(tiny_zoo.base),
        "--experts",
        str(tiny_zoo.experts["add"]),
        str(tiny_zoo.experts["sort"]),
        "--tasks",
        str(tiny_zoo.tasks["add"]),
        str(tiny_zoo.tasks["sort"]),
        "--k",
        "2",
        "--generations",
        "1",
        "--limit",
        "4",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "run"),
    ]
    assert main([*args, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (
        data["evaluations"] == 4 and data["nodes"] == 5 and data["winner_path"].endswith("winner")
    )  # two experts, their uniform average and their one child (the base is a node too)
    assert set(data["baselines"]) == {"add", "sort", "uniform"}
    assert main([*args, "--json", "--resume", "--save-node", "add"]) == 0
    assert json.loads(capsys.readouterr().out)["evaluations"] == 0
    assert (tmp_path / "run" / "nodes" / "add" / "config.json").is_file()
    assert main([*args, "--resume", "--save-node", "g9-9"]) == 2
    assert "no such node" in capsys.readouterr().err
    assert main([*args, "--resume", "--method", "linear"]) == 4
    assert "different settings" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n')
    assert (
        main(
            [
                "search",
                "--base",
                str(tiny_zoo.base),
                "--experts",
                "a",
                "b",
                "--tasks",
                str(bad),
                "--out",
                str(tmp_path / "r2"),
            ]
        )
        == 2
    )
    assert "line 1" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["linear", "ties"])
def test_other_merge_methods_use_the_common_base(tiny_zoo, tmp_path, method):
    result = greedy_search(
        config(
            tiny_zoo,
            tmp_path / "run",
            names=["add", "sort"],
            k=2,
            generations=1,
            method=method,
            materialize=[],
        )
    )
    child = result.tree.nodes["g1-1"]
    assert child.method == method and "base_model" not in child.parameters
    recipes = json.loads((tmp_path / "run" / "recipes.json").read_text())
    assert recipes["g1-1"]["base"] == str(tiny_zoo.base.resolve())
    assert len(recipes["g1-1"]["models"]) == 2 and child.recipe["base"] == "base"
    assert child.fitness is not None and math.isfinite(child.fitness)


def test_ctrl_c_saves_state_and_resume_finishes_without_rescoring(
    tiny_zoo, tmp_path, monkeypatch, capsys
):
    calls = {"n": 0}
    real_score = Evaluator.score

    def interrupted(self, model):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real_score(self, model)

    monkeypatch.setattr(Evaluator, "score", interrupted)
    args = [
        "search",
        "--base",
        str(tiny_zoo.base),
        "--experts",
        str(tiny_zoo.experts["add"]),
        str(tiny_zoo.experts["sort"]),
        str(tiny_zoo.experts["reverse"]),
        "--tasks",
        str(tiny_zoo.tasks["add"]),
        "--k",
        "2",
        "--generations",
        "2",
        "--limit",
        "4",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "run"),
    ]
    assert main(args) == 130
    assert "--resume" in capsys.readouterr().err
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["status"] == "interrupted"
    assert len(json.loads((tmp_path / "run" / "scores.json").read_text())) == 4
    monkeypatch.setattr(Evaluator, "score", real_score)
    assert main([*args, "--resume", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["cache_hits"] == 4 and data["evaluations"] == data["nodes"] - 1 - 4


def test_batched_kinship_equals_pairwise_and_takes_fewer_passes(tiny_zoo, monkeypatch):
    """The exploration step's kinships share passes over the weights but give the same values."""
    import hub_merge.kinship as kinship_module
    from hub_merge.merge import MergeSession
    from hub_merge.search.backend import EngineBackend

    names = ["add", "reverse", "sort", "uppercase"]
    folders = {n: tiny_zoo.experts[n] for n in names}
    tasks = load_tasks([str(tiny_zoo.tasks["add"])], limit=2)
    tok = AutoTokenizer.from_pretrained(tiny_zoo.base)
    session = MergeSession(tiny_zoo.base, device="cpu")
    backend = EngineBackend(session, Evaluator(tasks, tok), folders, keep_models=2)
    original = {n: MergeRecipe.leaf(n) for n in names}
    merged = [
        MergeRecipe(
            method="linear",
            parameters={"weight": 0.5},
            models=[ModelEntry(model=a), ModelEntry(model=b)],
        )
        for a, b in [("add", "reverse"), ("sort", "uppercase"), ("add", "sort")]
    ]
    anchor, others = original["add"], [original["reverse"], original["sort"], *merged]

    passes = []
    real = kinship_module.kinship_matrix
    monkeypatch.setattr(
        kinship_module, "kinship_matrix", lambda *a, **k: passes.append(1) or real(*a, **k)
    )
    batched = backend.kinship_many(anchor, others)
    assert len(passes) < len(others)  # keep_models=2: one merged node per pass, originals free
    pairwise = [backend.kinship(anchor, other) for other in others]

    # The reference: every task vector flattened densely in float64, Pearson by numpy. Originals
    # are read straight from their files, merged nodes are the engine's state dicts; none of it
    # goes through hub_merge.kinship.
    import numpy as np
    from safetensors.torch import load_file

    base = load_file(tiny_zoo.base / "model.safetensors")
    floats = [k for k, v in base.items() if v.is_floating_point()]

    def flat(candidate) -> np.ndarray:
        if candidate.is_leaf:
            state = load_file(folders[candidate.models[0].model] / "model.safetensors")
        else:
            state = backend.state(candidate)
        return np.concatenate(
            [(state[k].double().cpu() - base[k].double()).numpy().ravel() for k in floats]
        )

    anchor_flat = flat(anchor)
    reference = [float(np.corrcoef(anchor_flat, flat(other))[0, 1]) for other in others]
    assert len(set(np.round(reference, 6))) == len(reference)  # distinct values: a real check
    assert batched == pytest.approx(reference, rel=1e-6, abs=1e-9)
    assert pairwise == pytest.approx(reference, rel=1e-6, abs=1e-9)


def test_state_cache_fits_free_memory(tiny_zoo):
    from types import SimpleNamespace

    from hub_merge.merge import MergeSession
    from hub_merge.search.memory import MEMORY_SHARE, available_ram, default_max_memory, parse_bytes

    tiny = MergeSession(tiny_zoo.base, device="cpu")
    free = available_ram()
    assert free is not None
    assert default_max_memory(tiny) == pytest.approx(MEMORY_SHARE * free, rel=0.2)
    huge = SimpleNamespace(  # a 4 TB state dict on the meta device: room for one, no more
        device="cpu", base=SimpleNamespace(state={"w": torch.empty(10**12, device="meta")})
    )
    assert default_max_memory(huge) == 4 * 10**12
    assert parse_bytes("3GB") == 3 * 10**9 and parse_bytes("512MiB") == 512 * 2**20
    assert parse_bytes(1024) == 1024 and parse_bytes("1.5g") == 1_500_000_000
    for bad in ("lots", "3 parsecs", "-1GB", True):
        with pytest.raises(ConfigError, match="max-memory"):
            parse_bytes(bad)


def test_state_cache_stays_under_its_byte_budget(tiny_zoo):
    """A greedy ancestry (merges of merges) rebuilt under a budget of two state dicts."""
    from hub_merge.merge import MergeSession
    from hub_merge.search.backend import EngineBackend

    names = ["add", "reverse", "sort", "uppercase"]
    folders = {n: tiny_zoo.experts[n] for n in names}
    tok = AutoTokenizer.from_pretrained(tiny_zoo.base)
    session = MergeSession(tiny_zoo.base, device="cpu")
    tasks = load_tasks([str(tiny_zoo.tasks["add"])], limit=2)
    free = EngineBackend(session, Evaluator(tasks, tok), folders, keep_models=64)
    size = free.model_bytes
    tight = EngineBackend(session, Evaluator(tasks, tok), folders, max_memory=2 * size)
    assert tight.slots == 2

    def slerp(a, b):
        return MergeRecipe(
            method="slerp", base=a, models=[ModelEntry(model=b)], parameters={"t": 0.4}
        )

    g1 = [slerp(a, b) for a, b in [("add", "reverse"), ("sort", "uppercase"), ("add", "sort")]]
    g2 = [slerp(g1[0], g1[1]), slerp(g1[1], g1[2])]
    g3 = slerp(g2[0], g2[1])
    for r in [*g1, *g2, g3, g1[0]]:
        got, want = tight.state(r), free.state(r)
        assert all(torch.equal(got[k], want[k]) for k in want)
        assert tight.cached_bytes <= 2 * size
    assert tight.peak_cached_bytes <= 2 * size < free.peak_cached_bytes
    # evicted ancestors were merged again (tensor by tensor, as a child's inputs), not kept
    assert tight.merges + tight.lazy_merges > free.merges + free.lazy_merges


def test_a_child_of_merged_parents_holds_no_parent_state_dict(tiny_zoo):
    """With room for one state dict, a third-generation child is built without building (and
    holding) its parents' and grandparents' state dicts: they are merged tensor by tensor as
    its inputs, with the very numbers of a full merge."""
    from hub_merge.merge import MergeSession
    from hub_merge.search.backend import EngineBackend

    names = ["add", "reverse", "sort", "uppercase"]
    folders = {n: tiny_zoo.experts[n] for n in names}
    tok = AutoTokenizer.from_pretrained(tiny_zoo.base)
    session = MergeSession(tiny_zoo.base, device="cpu")
    tasks = load_tasks([str(tiny_zoo.tasks["add"])], limit=2)
    one = EngineBackend(session, Evaluator(tasks, tok), folders, max_memory=1)

    def slerp(a, b):
        return MergeRecipe(
            method="slerp", base=a, models=[ModelEntry(model=b)], parameters={"t": 0.4}
        )

    g1 = [slerp(a, b) for a, b in [("add", "reverse"), ("sort", "uppercase"), ("add", "sort")]]
    g2 = [slerp(g1[0], g1[1]), slerp(g1[1], g1[2])]
    g3 = slerp(g2[0], g2[1])
    got = one.state(g3)
    assert one.merges == 1 and one.lazy_merges == 2 + 4  # g3 built; g2 and g1 as its inputs
    assert list(one._lru) == [g3.recipe_hash()]
    free = EngineBackend(session, Evaluator(tasks, tok), folders, keep_models=64)
    for r in [*g1, *g2]:  # the parents built in full first, as a roomy cache keeps them
        free.state(r)
    want = free.state(g3)
    assert free.lazy_merges == 0
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    # kinship of merged nodes not in the cache: read tensor by tensor, no state dict built
    merges = one.merges
    lazy = one.kinship_many(g1[0], [g2[0], g2[1]])
    assert one.merges == merges
    assert lazy == pytest.approx(free.kinship_many(g1[0], [g2[0], g2[1]]), rel=1e-9, abs=1e-12)


def test_a_retrained_local_expert_is_scored_again_on_resume(tiny_zoo, tmp_path):
    """Local experts are cached by content (headers, sizes, mtimes), not by path."""
    import shutil

    from safetensors.torch import load_file, save_file

    models = {}
    for name in ("add", "sort"):
        models[name] = tmp_path / name
        shutil.copytree(tiny_zoo.experts[name], models[name])
    kw = {"models": models, "names": ["add", "sort"], "k": 2, "generations": 1, "materialize": []}
    first = greedy_search(config(tiny_zoo, tmp_path / "run", **kw))
    assert first.evaluations == 4  # two experts, their average, their child
    assert greedy_search(config(tiny_zoo, tmp_path / "run", resume=True, **kw)).evaluations == 0
    # retrain "sort" in place: same path, other weights
    weights = models["sort"] / "model.safetensors"
    state = load_file(weights)
    save_file({k: v * 1.01 if v.is_floating_point() else v for k, v in state.items()}, weights)
    again = greedy_search(config(tiny_zoo, tmp_path / "run", resume=True, **kw))
    assert again.evaluations == 3  # sort, the average and the child read it; add is cached
    assert again.tree.nodes["sort"].fitness != first.tree.nodes["sort"].fitness
    assert again.tree.nodes["add"].fitness == first.tree.nodes["add"].fitness
