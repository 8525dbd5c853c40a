"""``--strategy swarm`` end to end on the tiny zoo: API, CLI, resume, lineage, plot, adapter push."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hub_merge.errors import ConfigError, IncompatibleModelsError
from hub_merge.merge.recipe import MergeRecipe
from hub_merge.search import SearchConfig, search
from hub_merge.search.strategy import get_strategy

TASKS = ["add", "sort", "reverse"]


def _config(zoo, out, models, **kw):
    kw.setdefault("settings", {"population": 4, "max_steps": 2})
    return SearchConfig(
        base=str(zoo.base),
        experts=[str(models[t]) for t in TASKS],
        tasks=[str(zoo.tasks[t]) for t in TASKS],
        out=str(out),
        strategy="swarm",
        limit=2,
        device="cpu",
        progress=False,
        **kw,
    )


def test_dense_swarm_records_the_global_best_and_resumes_without_evaluating(tiny_zoo, tmp_path):
    config = _config(tiny_zoo, tmp_path / "run", tiny_zoo.experts, seed=3)
    result = search(config)
    tree = result.tree
    assert result.strategy == "swarm" and result.stop_reason == "max steps (2) reached"
    # generation 1 is the swarm's start (the experts, already scored, plus a crossover child
    # for the 4th particle); 2 and 3 are moves of 4 particles
    assert [g.generation for g in tree.generations] == [0, 1, 2, 3]
    assert result.evaluations == 4 + 1 + 4 + 4  # 3 experts + uniform, 1 child, 2 × 4 moves
    for g in tree.generations[1:]:
        node = tree.nodes[g.best_id]  # the swarm's global best at each step is a node
        alpha = g.stats["alpha"]
        assert g.best_fitness == pytest.approx(node.fitness)
        assert sum(alpha) == pytest.approx(1.0)
        if node.kind == "merge":  # the α of the global best is its recipe's weights
            assert node.method == "task_arithmetic"
            weights = [m["parameters"]["weight"] for m in node.recipe["models"]]
            assert weights == pytest.approx(alpha)
            assert node.recipe["parameters"] == {"normalize": False}
        else:
            assert alpha.count(1.0) == 1 and node.kind == "expert"
    assert (tmp_path / "run" / "trajectory.png").stat().st_size > 1000
    assert (tmp_path / "run" / "winner" / "model.safetensors").is_file()

    again = search(_config(tiny_zoo, tmp_path / "run", tiny_zoo.experts, seed=3, resume=True))
    assert again.evaluations == 0 and again.winner == result.winner
    assert again.tree.nodes[again.winner].fitness == tree.nodes[result.winner].fitness
    # patience/max_steps may change on resume: two more steps cost only the new particles
    more = search(
        _config(
            tiny_zoo,
            tmp_path / "run",
            tiny_zoo.experts,
            seed=3,
            resume=True,
            settings={"population": 4, "max_steps": 3},
        )
    )
    assert more.evaluations == 4 and len(more.tree.generations) == 5


def test_swarm_card_paragraph_names_the_paper():
    text = get_strategy("swarm").explain()
    assert "Model Swarms" in text and "arxiv.org/abs/2410.11163" in text
    assert "A = Σ α_j A_j" in text


@pytest.mark.parametrize(
    "models, settings, error, match",
    [
        ("mixed", {"space": "adapter"}, ConfigError, "sort is a full model: use --space dense"),
        ("adapters", {"population": 2}, ConfigError, "population 2 is smaller than the 3"),
        ("rank2", {"space": "adapter"}, IncompatibleModelsError, "different ranks.*dense space"),
    ],
)
def test_bad_swarm_input_fails_before_scoring(tiny_zoo, tmp_path, models, settings, error, match):
    experts = dict(tiny_zoo.adapters)
    if models == "mixed":
        experts["sort"] = tiny_zoo.experts["sort"]
    if models == "rank2":
        from tests.fixtures.merge import save_lora

        save_lora(tiny_zoo.base, tmp_path / "r2", None, seed=1, r=2)
        experts["sort"] = tmp_path / "r2"
    with pytest.raises(error, match=match):
        search(_config(tiny_zoo, tmp_path / "run", experts, settings=settings))
    assert not (tmp_path / "run" / "scores.json").exists()


def test_adapter_swarm_from_the_cli_pushes_an_adapter_that_peft_loads(tiny_zoo, tmp_path):
    from click.testing import CliRunner
    from huggingface_hub import snapshot_download
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from hub_merge.cli import cli
    from hub_merge.localhub import LocalHub
    from hub_merge.publish import publish
    from hub_merge.zoo import upload_zoo

    tokens = {"hf_zoo": ("hub-merge-zoo", "write"), "hf_alice": ("alice", "write")}
    with LocalHub(tmp_path / "hub", tokens=tokens) as server:
        keys = ["base", *(f"adapter/{t}" for t in TASKS)]
        seeded = upload_zoo(tiny_zoo, endpoint=server.endpoint, token="hf_zoo", include=keys)
        run = tmp_path / "run"
        args = ["search", "--strategy", "swarm", "--space", "adapter", "--population", "4"]
        args += ["--max-steps", "1", "--base", seeded.base, "--experts"]
        args += [seeded.repo_ids[f"adapter/{t}"] for t in TASKS]
        args += ["--tasks", *(str(tiny_zoo.tasks[t]) for t in TASKS), "--out", str(run)]
        args += ["--limit", "2", "--device", "cpu", "--json", "--endpoint", server.endpoint]
        args += ["--combine", "harmonic"]  # the paper's utility for several tasks
        env = {"HF_TOKEN": "hf_alice", "HF_HUB_CACHE": str(tmp_path / "cache")}
        res = CliRunner().invoke(cli, args, env=env, catch_exceptions=False)
        assert res.exit_code == 0, res.output
        data = json.loads(res.output[res.output.index("{") :])
        from hub_merge.evaluate import fitness_from_scores

        harmonic = fitness_from_scores(data["scores"], "answer_loss", combine="harmonic")
        assert data["fitness"] == pytest.approx(harmonic) and 0 < harmonic < 1
        # publish the swarm's best particle (a factor mix), written by a replay: 0 evaluations
        from hub_merge.lineage import FamilyTree

        tree = FamilyTree.load(run / "family_tree.json")
        best = max(
            (n for n in tree.nodes.values() if n.kind == "merge" and n.method == "lora_factor_sum"),
            key=lambda n: n.fitness,
        )
        res = CliRunner().invoke(
            cli, [*args, "--resume", "--save-node", best.id], env=env, catch_exceptions=False
        )
        assert res.exit_code == 0, res.output
        assert json.loads(res.output[res.output.index("{") :])["evaluations"] == 0
        node = run / "nodes" / best.id
        assert (node / "adapter_config.json").is_file()
        assert not (node / "model.safetensors").exists()
        assert sum(p.stat().st_size for p in node.rglob("*") if p.is_file()) < 2_000_000
        published = publish(
            run, "alice/swarm", node_id=best.id, endpoint=server.endpoint, token="hf_alice"
        )
        assert published.push.commit_sha
        local = snapshot_download(
            "alice/swarm", endpoint=server.endpoint, token="hf_alice", cache_dir=tmp_path / "dl"
        )
    card = (Path(local) / "README.md").read_text()
    assert "**Model Swarms**" in card and "library_name: peft" in card
    assert "--strategy swarm --space adapter --population 4 --max-steps 1" in card
    assert "--combine harmonic" in card
    assert f"hub-merge merge {best.id}.yml --out ./{best.id}" in card  # not a mergekit method
    base = AutoModelForCausalLM.from_pretrained(tiny_zoo.base, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, local).merge_and_unload()
    # the pushed adapter is the mix the search scored: W_base + (Σα B)(Σα A)
    from hub_merge.merge import MergeRecipe, MergeSession
    from hub_merge.merge.adapter_mix import FactorMix

    recipe = MergeRecipe.from_dict(
        json.loads((run / "nodes" / f"{best.id}.recipe.json").read_text())
    )
    weights = [m.parameters["weight"] for m in recipe.models]
    mix = FactorMix([tiny_zoo.adapters[t] for t in TASKS])
    expect = mix.apply(MergeSession(tiny_zoo.base, device="cpu").base.state, weights)
    loaded = model.state_dict()
    for name in mix.modules:
        torch.testing.assert_close(loaded[name], expect[name], atol=1e-5, rtol=1e-4)


def test_swarm_particles_are_scored_in_place_with_the_merge_paths_scores(tiny_zoo):
    from transformers import AutoTokenizer

    from hub_merge.evaluate import Evaluator, load_tasks
    from hub_merge.merge import MergeSession
    from hub_merge.search.backend import EngineBackend
    from hub_merge.search.pso import position_recipe

    folders = {t: str(tiny_zoo.adapters[t]) for t in TASKS}
    tasks = load_tasks([str(tiny_zoo.tasks[t]) for t in TASKS], limit=2)
    tok = AutoTokenizer.from_pretrained(tiny_zoo.base)
    session = MergeSession(tiny_zoo.base, device="cpu", dtype=torch.float32)
    backend = EngineBackend(session, Evaluator(tasks, tok), folders, base_source="B")
    # the merge path, in its own session (its model is not the in-place one)
    reference = MergeSession(tiny_zoo.base, device="cpu", dtype=torch.float32)
    merged = EngineBackend(reference, Evaluator(tasks, tok), folders, base_source="B")
    alpha = [0.6, 0.7, -0.3]
    for space in ("dense", "adapter"):
        recipe = position_recipe(space, "B", TASKS, alpha)
        fast = backend.evaluate(recipe)
        slow = Evaluator(tasks, tok).score(reference.to_model(merged.state(recipe)))
        assert fast == pytest.approx(slow, rel=1e-5)
    assert backend.in_place == 2
    before = backend.evaluate(position_recipe("dense", "B", TASKS, [1 / 3] * 3))
    backend.evaluate(
        MergeRecipe(
            method="ties", base="B", models=TASKS, parameters={"weight": 1.0, "density": 0.5}
        )
    )
    assert backend.evaluate(position_recipe("dense", "B", TASKS, [1 / 3] * 3)) == before  # restored


def test_auto_space_is_the_papers_adapter_space_when_every_expert_is_an_adapter(tiny_zoo, tmp_path):
    from types import SimpleNamespace

    from hub_merge.search.pso import SwarmSettings
    from hub_merge.search.strategy import Expert, StrategyContext
    from tests.fixtures.merge import save_lora

    swarm = get_strategy("swarm")
    assert SwarmSettings().space == "auto"

    def strategy(models, adapters):
        experts = [
            Expert(name=n, source=str(f), is_adapter=a)
            for (n, f), a in zip(models.items(), adapters, strict=True)
        ]
        ws = SimpleNamespace(expert_folders=dict(models))
        ctx = StrategyContext(base=str(tiny_zoo.base), experts=experts, workspace=ws)
        return swarm(SwarmSettings(), ctx)

    adapters = {t: tiny_zoo.adapters[t] for t in TASKS}
    s = strategy(adapters, [True] * 3)
    assert s.space == "adapter"
    assert s.recipe([0.2, 0.3, 0.5]).method == "lora_factor_sum"
    mixed = dict(adapters, sort=tiny_zoo.experts["sort"])
    assert strategy(mixed, [True, False, True]).space == "dense"
    save_lora(tiny_zoo.base, tmp_path / "r2", None, seed=1, r=2)
    ranks = dict(adapters, sort=tmp_path / "r2")
    assert strategy(ranks, [True] * 3).space == "dense"  # ranks differ: A = Σ α A_j has no shape
