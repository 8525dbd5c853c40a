"""A random method without a seed gets one, recorded where the recipe is, so the recipe replays."""

from __future__ import annotations

import json

import torch
import yaml
from safetensors import safe_open

from hub_merge.cli import main
from hub_merge.merge import MergeRecipe, merge_to_folder
from tests.fixtures.merge import load_folder


def _recorded(folder) -> MergeRecipe:
    """The recipe a merged folder's safetensors metadata records."""
    [shard] = sorted(folder.glob("*.safetensors"))
    with safe_open(str(shard), framework="pt") as handle:
        return MergeRecipe.from_dict(json.loads(handle.metadata()["hub_merge_recipe"]))


def _random(models, method: str = "dare_ties", **extra) -> MergeRecipe:
    return MergeRecipe.from_dict(
        {
            "method": method,
            "base": str(models.base),
            "models": [
                {"model": str(e), "parameters": {"weight": 0.5, "density": 0.4, **extra}}
                for e in models.experts[:2]
            ],
        }
    )


def test_an_unseeded_dare_merge_records_a_seed_that_replays_its_tensors(tiny_models, tmp_path):
    recipe = _random(tiny_models)
    assert recipe.seed is None
    first = merge_to_folder(recipe, tmp_path / "a", progress=False)
    recorded = _recorded(first)
    assert isinstance(recorded.seed, int)
    again = merge_to_folder(recorded, tmp_path / "b", progress=False)
    a, b = load_folder(first), load_folder(again)
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = merge_to_folder(
        recorded.model_copy(update={"seed": recorded.seed + 1}), tmp_path / "c", progress=False
    )
    c = load_folder(other)
    assert any(not torch.equal(a[k], c[k]) for k in a)  # the seed is what fixes the masks


def test_della_gets_a_seed_and_breadcrumbs_needs_none(tiny_models, tmp_path):
    della = _random(tiny_models, "della", epsilon=0.1)
    assert della.with_seed().seed is not None
    crumbs = _random(tiny_models, "breadcrumbs", gamma=0.05)
    assert crumbs.with_seed().seed is None  # magnitude ranks: deterministic
    one = load_folder(merge_to_folder(crumbs, tmp_path / "one", progress=False))
    two = load_folder(merge_to_folder(crumbs, tmp_path / "two", progress=False))
    assert all(torch.equal(one[k], two[k]) for k in one)


def test_nested_steps_get_seeds_too():
    inner = {"method": "dare_linear", "base": "b", "models": [{"model": "x"}]}
    recipe = MergeRecipe.from_dict(
        {"method": "linear", "models": [{"model": inner}, {"model": "y"}]}
    )
    assert recipe.unseeded_random_methods() == ["dare_linear"]
    seeded = recipe.with_seed(7)
    assert seeded.seed is None and seeded.models[0].model.seed == 7
    assert seeded.unseeded_random_methods() == []


def test_the_cli_says_which_seed_it_drew_and_the_exported_config_carries_it(
    tiny_models, tmp_path, capsys
):
    path = tmp_path / "dare.yaml"
    path.write_text(_random(tiny_models).to_yaml())
    assert main(["merge", str(path), "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    recorded = _recorded(tmp_path / "out")
    assert f"seed {recorded.seed}" in err
    exported = recorded.to_mergekit_yaml()
    assert yaml.safe_load(exported)["random_seed"] == recorded.seed
    assert MergeRecipe.from_yaml(exported).seed == recorded.seed  # the published config replays
