"""``--strategy dam`` end to end on the tiny zoo: search, score on test rows, card, push."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from hub_merge.cli import main
from hub_merge.errors import ConfigError, TaskFileError
from hub_merge.lineage import FamilyTree
from hub_merge.merge import MergeRecipe, merge_to_folder


def _args(zoo, run, *extra: str) -> list[str]:
    names = sorted(zoo.adapters)
    return [
        "search",
        "--strategy",
        "dam",
        "--base",
        str(zoo.base),
        "--experts",
        *[str(zoo.adapters[n]) for n in names],
        "--tasks",
        *[str(zoo.tasks[n]) for n in names],
        "--train-tasks",
        *[str(zoo.train[n]) for n in names],
        "--out",
        str(run),
        "--limit",
        "16",
        "--device",
        "cpu",
        "--no-progress",
        "--steps",
        "6",
        "--lr",
        "0.05",
        "--train-batch-size",
        "8",
        "--max-rows",
        "64",
        *extra,
    ]


def test_cli_dam_search_publishes_a_card_with_its_coefficients(
    tiny_zoo, local_hub, tmp_path, monkeypatch
):
    from hub_merge.hub import get_api

    run = tmp_path / "run"
    assert main(_args(tiny_zoo, run, "--save-node", "g1-1")) == 0
    tree = FamilyTree.load(run / "family_tree.json")
    node = tree.nodes["g1-1"]
    assert node.method == "dam"
    assert sorted(node.parents) == sorted(tiny_zoo.adapters)  # the experts are its parents
    assert (run / "dam" / "dam_coefficients.safetensors").is_file()
    recipe = MergeRecipe.from_dict(json.loads((run / "recipes.json").read_text())["g1-1"])
    assert recipe.parameters["steps"] == 6 and len(recipe.parameters["sha256"]) == 64
    # trained from the uniform average, it beats it on the rows the search never read
    test = tree.test_scores
    mean = {k: sum(v.values()) / len(v) for k, v in test.items()}
    assert mean["g1-1"] < mean["uniform"], mean

    monkeypatch.setenv("HF_TOKEN", local_hub.token)  # never a token in argv
    repo = f"{local_hub.user}/tiny-dam"
    code = main(
        ["push", str(run), "--repo", repo, "--node", "g1-1", "--license", "apache-2.0",
         "--endpoint", local_hub.endpoint]
    )  # fmt: skip
    assert code == 0
    api = get_api(local_hub.endpoint, local_hub.token)
    files = set(api.list_repo_files(repo))
    assert {"dam_coefficients.safetensors", "dam_coefficients.png", "model.safetensors"} <= files
    card = open(api.hf_hub_download(repo, "README.md", local_dir=tmp_path / "dl")).read()
    assert "## DAM coefficients" in card and "![DAM coefficients" in card
    assert "Differentiable Adaptive Merging" in card and "held-out test rows" in card
    assert "No training was involved" not in card
    # the published card and record name the coefficients as the repo's file, never the run
    # folder's path (a Space's server disk would show through otherwise)
    record = open(api.hf_hub_download(repo, "hub_merge.json", local_dir=tmp_path / "dl")).read()
    for text in (card, record):
        assert str(run) not in text and "dam_coefficients.safetensors" in text

    # the merge engine rebuilds the recipe from its coefficient file, and checks its digest
    from transformers import AutoModelForCausalLM

    out = merge_to_folder(recipe, tmp_path / "again", device="cpu", progress=False)
    AutoModelForCausalLM.from_pretrained(out)
    a, b = load_file(out / "model.safetensors"), load_file(run / "nodes/g1-1/model.safetensors")
    assert max(float((a[n] - b[n]).abs().max()) for n in a) <= 1e-6
    bad = recipe.model_copy(update={"parameters": {**recipe.parameters, "sha256": "0" * 64}})
    with pytest.raises(ConfigError, match="sha256 differs"):
        merge_to_folder(bad, tmp_path / "bad", device="cpu", progress=False)
    assert not (tmp_path / "bad").exists()


def test_dam_strategy_refuses_bad_input_before_scoring(tiny_zoo, tmp_path):
    from hub_merge.search import SearchConfig, search

    names = sorted(tiny_zoo.adapters)
    common = dict(
        base=str(tiny_zoo.base),
        experts=[str(tiny_zoo.adapters[n]) for n in names],
        strategy="dam",
        device="cpu",
        progress=False,
        limit=8,
    )
    with pytest.raises(ConfigError, match="steps must be at least 1"):
        search(SearchConfig(tasks=[str(tiny_zoo.tasks[n]) for n in names], out=str(tmp_path / "a"),
                            settings={"steps": 0}, **common))  # fmt: skip
    with pytest.raises(ConfigError, match="'add' matches no task"):
        search(SearchConfig(tasks=[str(tiny_zoo.tasks[n]) for n in names[1:]],
                            out=str(tmp_path / "b"), **common))  # fmt: skip
    leaky = tmp_path / "add.jsonl"
    leaky.write_text(tiny_zoo.tasks["add"].read_text())  # every test row among the training rows
    with pytest.raises(TaskFileError, match="test prompt"):
        search(SearchConfig(tasks=[str(tiny_zoo.tasks[n]) for n in names], out=str(tmp_path / "c"),
                            train_tasks=[str(leaky)], **common))  # fmt: skip
    assert not any((tmp_path / d).exists() for d in "abc")
