"""Merge engine behaviour: adapters, in-memory sessions, sharding, atomic output, bad input, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hub_merge.cli import main
from hub_merge.errors import ConfigError, IncompatibleModelsError, MergeError, UnknownMethodError
from hub_merge.merge import (
    MergeRecipe,
    MergeSession,
    ModelEntry,
    default_greedy_recipe,
    merge_to_folder,
)


def _load(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(f))
    return out


def _ta(base, models, weight=0.5):
    return MergeRecipe(
        method="task_arithmetic",
        base=str(base),
        models=[ModelEntry(model=str(m), parameters={"weight": weight}) for m in models],
    )


def test_adapter_inputs_equal_peft_merged_models(tiny_models, tmp_path):
    z = tiny_models
    a = _load(
        merge_to_folder(_ta(z.base, z.adapters), tmp_path / "a", device="cpu", progress=False)
    )
    b = _load(
        merge_to_folder(_ta(z.base, z.adapter_full), tmp_path / "b", device="cpu", progress=False)
    )
    assert set(a) == set(b)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)
    # the adapter really changed something
    base = _load(z.base)
    assert not torch.equal(
        a["model.layers.0.self_attn.q_proj.weight"], base["model.layers.0.self_attn.q_proj.weight"]
    )


def test_sharded_output_loads_and_generates(tiny_models, tmp_path):
    from transformers import AutoModelForCausalLM

    out = merge_to_folder(
        _ta(tiny_models.base, tiny_models.experts[:2]),
        tmp_path / "m",
        max_shard_bytes=60_000,
        progress=False,
    )
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(shards) > 1 and shards[0].endswith(f"-of-{len(shards):05d}.safetensors")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    assert (out / "config.json").is_file() and (out / "generation_config.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(out)
    ids = model.generate(torch.tensor([[1, 5, 7]]), max_new_tokens=3, do_sample=False)
    assert ids.shape == (1, 6)
    assert not list(tmp_path.glob(".m.partial-*"))


def test_interrupted_merge_leaves_nothing(tiny_models, tmp_path):
    seen = []

    def stop(name):
        seen.append(name)
        if len(seen) == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        merge_to_folder(
            _ta(tiny_models.base, tiny_models.experts),
            tmp_path / "out",
            on_tensor=stop,
            progress=False,
        )
    assert list(tmp_path.iterdir()) == []


def test_full_disk_is_a_clean_merge_error(tiny_models, tmp_path, monkeypatch):
    from hub_merge import tensors

    def full(self, name, tensor):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tensors.ShardedWriter, "write", full)
    with pytest.raises(MergeError, match="No space left"):
        merge_to_folder(
            _ta(tiny_models.base, tiny_models.experts), tmp_path / "out", progress=False
        )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "kind, error, match",
    [
        ("vocab", IncompatibleModelsError, "vocabular"),
        ("adapter_other_base", IncompatibleModelsError, "another base"),
        ("unknown_method", UnknownMethodError, "Valid methods: .*ties"),
        ("unknown_param", UnknownMethodError, "Valid parameters: .*density"),
        ("missing_param", ConfigError, "needs parameter 't'"),
        ("no_base", ConfigError, "needs"),
        ("missing_tensor", IncompatibleModelsError, "lacks"),
    ],
)
def test_bad_input_fails_before_writing(kind, error, match, tiny_models, tmp_path):
    z = tiny_models
    e0, e1 = str(z.experts[0]), str(z.experts[1])
    if kind == "vocab":
        recipe = _ta(z.base, [z.experts[0], z.other_vocab])
    elif kind == "adapter_other_base":
        recipe = _ta(z.base, [z.other_base_adapter])
    elif kind == "unknown_method":
        recipe = MergeRecipe(method="tiez", base=str(z.base), models=[e0])
    elif kind == "unknown_param":
        recipe = MergeRecipe(
            method="ties",
            base=str(z.base),
            models=[ModelEntry(model=e0, parameters={"weight": 1, "densty": 0.5})],
        )
    elif kind == "missing_param":
        recipe = MergeRecipe(method="slerp", base=e0, models=[e1])
    elif kind == "no_base":
        recipe = MergeRecipe(method="ties", models=[ModelEntry(model=e0, parameters={"weight": 1})])
    else:
        partial = tmp_path / "partial"
        partial.mkdir()
        state = _load(z.experts[1])
        state.pop("model.norm.weight")
        from safetensors.torch import save_file

        save_file(state, partial / "model.safetensors")
        recipe = _ta(z.base, [z.experts[0], partial])
    with pytest.raises(error, match=match):
        merge_to_folder(recipe, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out*"))


def test_session_merge_equals_folder_merge_and_chains(tiny_models, tmp_path):
    z = tiny_models
    s = MergeSession(z.base, device="cpu")
    a, b = s.load(z.experts[0]), s.load(z.experts[1])
    lora = s.load(z.adapters[0])
    assert lora.is_adapter and lora.state is None  # never materialised as a full model

    recipe = default_greedy_recipe(str(z.experts[0]), str(z.experts[1]))
    in_memory = s.merge_recipe(recipe, models={str(z.experts[0]): a, str(z.experts[1]): b})
    on_disk = _load(merge_to_folder(recipe, tmp_path / "child", progress=False))
    for name, tensor in on_disk.items():
        torch.testing.assert_close(in_memory[name], tensor)

    # a child of a child, mixing a merged state dict and an adapter
    grandchild = s.merge("slerp", [lora], {"t": 0.3}, base=in_memory)
    expected = s.merge("slerp", [s.load(z.adapter_full[0])], {"t": 0.3}, base=in_memory)
    for name in expected:
        torch.testing.assert_close(grandchild[name], expected[name], rtol=1e-5, atol=1e-6)

    model = s.to_model(grandchild)
    assert model is s.to_model(in_memory)  # one reusable skeleton
    torch.testing.assert_close(
        model.state_dict()["model.norm.weight"], in_memory["model.norm.weight"]
    )
    with torch.no_grad():
        assert model(torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, 96)


def test_seeded_random_methods_are_deterministic(tiny_models):
    s = MergeSession(tiny_models.base, device="cpu")
    experts = [s.load(p) for p in tiny_models.experts[:2]]
    params = [{"weight": 0.5, "density": 0.4}] * 2
    one = s.merge("dare_ties", experts, model_parameters=params, seed=3)
    two = s.merge("dare_ties", experts, model_parameters=params, seed=3)
    other = s.merge("dare_ties", experts, model_parameters=params, seed=4)
    name = "model.layers.1.mlp.up_proj.weight"
    assert torch.equal(one[name], two[name])
    assert not torch.equal(one[name], other[name])


def test_recipe_yaml_round_trip_and_hash(tiny_models):
    r = default_greedy_recipe("org/a", "org/b")
    again = MergeRecipe.from_yaml(r.to_yaml())
    assert again == r and again.recipe_hash() == r.recipe_hash()
    changed = r.model_copy(update={"seed": 1})
    assert changed.recipe_hash() != r.recipe_hash()
    mk = r.to_mergekit_yaml(input_dtype="bfloat16")
    assert "merge_method: slerp" in mk and "filter: self_attn" in mk and "out_dtype: bfloat16" in mk
    with pytest.raises(ConfigError):
        MergeRecipe.from_yaml("method: ties\nmodels: 3\n")


def test_mergekit_yaml_names_the_output_dtype_of_local_inputs(tiny_models, tmp_path):
    """Without a recipe dtype the engine writes the inputs' dtype; the YAML must say which."""
    import yaml

    recipe = _ta(tiny_models.base, tiny_models.experts[:2])
    assert yaml.safe_load(recipe.to_mergekit_yaml())["out_dtype"] == "float32"
    assert yaml.safe_load(recipe.to_mergekit_yaml(input_dtype="float16"))["out_dtype"] == "float16"
    recipe.dtype = "bfloat16"
    assert yaml.safe_load(recipe.to_mergekit_yaml())["out_dtype"] == "bfloat16"


def test_cli_merge(tiny_models, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(_ta(tiny_models.base, tiny_models.experts[:2]).to_yaml())
    assert (
        main(["merge", str(recipe), "--out", str(tmp_path / "o"), "--device", "cpu", "--json"]) == 0
    )
    assert (tmp_path / "o" / "model.safetensors").is_file()
    # existing output is refused with a typed error (exit 2), not overwritten
    assert main(["merge", str(recipe), "--out", str(tmp_path / "o")]) == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: nope\nmodels: [x]\n")
    assert main(["merge", str(bad), "--out", str(tmp_path / "p")]) == 2
