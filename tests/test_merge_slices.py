"""mergekit's ``slices:``: stacking, per-slice merges, renumbered layers, plan and lineage.

The comparison with mergekit-yaml's tensors is in test_mergekit_examples.py (the slice configs
of tests/data/mergekit_examples/); these tests check what a user sees without mergekit.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from safetensors import safe_open

from hub_merge.errors import ConfigError, UnusedParameterWarning
from hub_merge.merge import MergeRecipe, merge_to_folder
from hub_merge.plan import plan_recipe
from tests.fixtures.merge import load_folder


def _stack(models, second=(1, 3)) -> MergeRecipe:
    e0, e1 = (str(p) for p in models.experts[:2])
    return MergeRecipe.from_yaml(
        f"""
merge_method: passthrough
slices:
  - sources: [{{model: {e0}, layer_range: [0, 2]}}]
  - sources: [{{model: {e1}, layer_range: {list(second)}}}]
"""
    )


def test_a_passthrough_stack_renumbers_layers_and_loads(tiny_models, tmp_path):
    from transformers import AutoModelForCausalLM

    recipe = _stack(tiny_models)
    out = merge_to_folder(recipe, tmp_path / "stack", progress=False)
    merged = load_folder(out)
    a, b = load_folder(tiny_models.experts[0]), load_folder(tiny_models.experts[1])
    w = "self_attn.q_proj.weight"
    assert torch.equal(merged[f"model.layers.0.{w}"], a[f"model.layers.0.{w}"])
    assert torch.equal(merged[f"model.layers.1.{w}"], a[f"model.layers.1.{w}"])
    assert torch.equal(merged[f"model.layers.2.{w}"], b[f"model.layers.1.{w}"])
    assert torch.equal(merged[f"model.layers.3.{w}"], b[f"model.layers.2.{w}"])
    assert torch.equal(merged["model.embed_tokens.weight"], a["model.embed_tokens.weight"])
    assert torch.equal(merged["lm_head.weight"], b["lm_head.weight"])  # after the last slice
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 4
    model = AutoModelForCausalLM.from_pretrained(out)
    assert len(model.model.layers) == 4
    model(torch.tensor([[1, 5, 7]]))
    # which output layers came from which parent, for the card's lineage
    [shard] = sorted(out.glob("*.safetensors"))
    with safe_open(str(shard), framework="pt") as handle:
        meta = handle.metadata()
    lineage = json.loads(meta["hub_merge_layers"])
    assert lineage == [
        {"layers": [0, 2], "sources": [{"model": str(tiny_models.experts[0]), "layers": [0, 2]}]},
        {"layers": [2, 4], "sources": [{"model": str(tiny_models.experts[1]), "layers": [1, 3]}]},
    ]
    assert MergeRecipe.from_dict(json.loads(meta["hub_merge_recipe"])) == recipe


def test_plan_estimates_the_stacked_size_and_refuses_a_range_past_the_model(tiny_models, tmp_path):
    recipe = _stack(tiny_models)
    plan = plan_recipe(recipe)
    assert plan.ok
    out = merge_to_folder(recipe, tmp_path / "stack", progress=False)
    written = sum(t.numel() * t.element_size() for t in load_folder(out).values())
    assert plan.estimates["output_bytes"] == pytest.approx(written, rel=0.01)
    one = sum(t.numel() * t.element_size() for t in load_folder(tiny_models.experts[0]).values())
    assert written > one  # 4 layers, not the inputs' 3
    bad = _stack(tiny_models, second=(1, 5))
    plan = plan_recipe(bad)
    assert not plan.ok
    assert any("reaches past its 3 layers" in i.detail for i in plan.issues)
    with pytest.raises(ConfigError, match="has no layer 3"):
        merge_to_folder(bad, tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad").exists()


def test_gradient_slerp_over_a_slice_reads_t_at_the_layers_place_in_the_slice(
    tiny_models, tmp_path
):
    e0, e1 = (str(p) for p in tiny_models.experts[:2])
    recipe = MergeRecipe.from_yaml(
        f"""
merge_method: slerp
base_model: {e0}
slices:
  - sources:
      - {{model: {e0}, layer_range: [1, 3]}}
      - {{model: {e1}, layer_range: [1, 3]}}
parameters:
  t: [0, 1]
"""
    )
    merged = load_folder(merge_to_folder(recipe, tmp_path / "out", progress=False))
    a, b = load_folder(e0), load_folder(e1)
    w = "mlp.down_proj.weight"
    # first layer of the slice: t = 0 (the base's layer 1); last: t = 1 (the other's layer 2)
    torch.testing.assert_close(merged[f"model.layers.0.{w}"], a[f"model.layers.1.{w}"])
    torch.testing.assert_close(merged[f"model.layers.1.{w}"], b[f"model.layers.2.{w}"])
    assert json.loads((tmp_path / "out" / "config.json").read_text())["num_hidden_layers"] == 2


def test_a_slice_filter_that_misses_a_tensor_falls_back_to_the_global_value(tiny_models, tmp_path):
    # mergekit reads a source's, then the slice's, then the config's parameters, and a filter list
    # that matches nothing for a tensor falls through to the next scope
    e0, e1 = (str(p) for p in tiny_models.experts[:2])
    recipe = MergeRecipe.from_yaml(
        f"""
merge_method: slerp
base_model: {e0}
slices:
  - sources:
      - {{model: {e0}, layer_range: [0, 3]}}
      - {{model: {e1}, layer_range: [0, 3]}}
    parameters:
      t: [{{filter: self_attn, value: 0}}]
parameters:
  t: 1
"""
    )
    merged = load_folder(merge_to_folder(recipe, tmp_path / "out", progress=False))
    a, b = load_folder(e0), load_folder(e1)
    attn, mlp = "model.layers.1.self_attn.q_proj.weight", "model.layers.1.mlp.up_proj.weight"
    torch.testing.assert_close(merged[attn], a[attn])  # the slice's filter: t = 0
    torch.testing.assert_close(merged[mlp], b[mlp])  # no filter matched: the config's t = 1


def test_slice_parameters_the_method_does_not_read_are_named_by_slice():
    text = """
merge_method: passthrough
slices:
  - sources:
      - {model: a, layer_range: [0, 2], parameters: {weight: 1.0}}
    parameters: {t: 0.5}
"""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        recipe = MergeRecipe.from_yaml(text)
    [w] = [c for c in caught if issubclass(c.category, UnusedParameterWarning)]
    assert "slices[0].sources[0].parameters" in str(w.message)
    assert "slices[0].parameters" in str(w.message)
    assert recipe.slices[0].parameters == {} and recipe.slices[0].sources[0].parameters == {}
    with pytest.raises(ConfigError, match="same number of layers"):
        MergeRecipe.from_yaml(
            "merge_method: linear\nslices:\n  - sources:\n"
            "      - {model: a, layer_range: [0, 2]}\n      - {model: b, layer_range: [0, 3]}\n"
        )
    with pytest.raises(ConfigError, match="residual_weight"):
        MergeRecipe.from_yaml(
            "merge_method: passthrough\nslices:\n"
            "  - {sources: [{model: a, layer_range: [0, 2]}], residual_weight: 0.5}\n"
        )


def test_a_sliced_recipe_exports_back_to_the_same_mergekit_config(tiny_models):
    recipe = _stack(tiny_models)
    again = MergeRecipe.from_yaml(recipe.to_mergekit_yaml(input_dtype="float32"))
    assert again.slices == recipe.slices and again.method == "passthrough"


@pytest.fixture(scope="module")
def gpt2_pair(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel

    root = tmp_path_factory.mktemp("gpt2")
    cfg = GPT2Config(vocab_size=64, n_embd=32, n_layer=3, n_head=4, n_positions=32)
    for i in range(2):
        torch.manual_seed(i)
        GPT2LMHeadModel(cfg).save_pretrained(root / f"m{i}")
    config = root / "stack.yml"
    config.write_text(
        f"slices:\n  - sources:\n    - {{model: {root / 'm0'}, layer_range: [0, 2]}}\n"
        f"  - sources:\n    - {{model: {root / 'm1'}, layer_range: [1, 3]}}\n"
        "merge_method: passthrough\ndtype: float32\n"
    )
    return root, config


def test_a_gpt2_stack_renumbers_h_blocks_and_sets_n_layer(gpt2_pair, tmp_path):
    from transformers import AutoModelForCausalLM

    root, config = gpt2_pair
    out = merge_to_folder(MergeRecipe.from_yaml(config), tmp_path / "out", progress=False)
    merged, m1 = load_folder(out), load_folder(root / "m1")
    name = "transformer.h.{}.attn.c_attn.weight"
    assert torch.equal(merged[name.format(3)], m1[name.format(2)])
    assert torch.equal(merged["transformer.ln_f.weight"], m1["transformer.ln_f.weight"])
    assert json.loads((out / "config.json").read_text())["n_layer"] == 4
    assert len(AutoModelForCausalLM.from_pretrained(out).transformer.h) == 4


@pytest.mark.slow  # one mergekit-yaml process
def test_the_gpt2_stack_gives_mergekit_yaml_tensors(gpt2_pair, tmp_path):
    from tests.fixtures.merge import run_mergekit_yaml

    _, config = gpt2_pair
    run_mergekit_yaml([(str(config), str(tmp_path / "mk"))])
    ours = load_folder(
        merge_to_folder(MergeRecipe.from_yaml(config), tmp_path / "o", progress=False)
    )
    theirs = load_folder(tmp_path / "mk")
    assert set(ours) == set(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_the_cli_pulls_every_slice_source_from_the_hub(local_hub, tiny_models, tmp_path, capsys):
    from hub_merge.cli import main
    from hub_merge.hub import get_api

    api = get_api(local_hub.endpoint, local_hub.token)
    refs = []
    for i, folder in enumerate(tiny_models.experts[:2]):
        repo_id = f"{local_hub.user}/slice-src-{i}"
        api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=folder)
        refs.append(repo_id)
    config = tmp_path / "stack.yml"
    config.write_text(
        f"merge_method: passthrough\nslices:\n"
        f"  - sources: [{{model: {refs[0]}, layer_range: [0, 2]}}]\n"
        f"  - sources: [{{model: {refs[1]}, layer_range: [1, 3]}}]\n"
    )
    hub = ["--endpoint", local_hub.endpoint, "--token", local_hub.token]
    assert main(["merge", str(config), "--out", str(tmp_path / "out"), *hub]) == 0
    local = load_folder(merge_to_folder(_stack(tiny_models), tmp_path / "local", progress=False))
    pulled = load_folder(tmp_path / "out")
    assert set(pulled) == set(local) and all(torch.equal(pulled[k], local[k]) for k in local)
