"""mergekit YAML configs run as written and give mergekit-yaml's tensors, bf16 included."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hub_merge.cli import main
from hub_merge.errors import ConfigError
from hub_merge.merge import MergeRecipe, merge_to_folder
from tests.fixtures.merge import build_tiny_models, load_folder, run_mergekit_yaml

pytestmark = pytest.mark.slow  # one mergekit subprocess (~10 s of imports on 2 cores)

CONFIGS = {
    # bf16 arithmetic, weights per model, no base.
    "linear_bf16": """
merge_method: linear
models:
  - model: {e0}
    parameters: {{weight: 0.7}}
  - model: {e1}
    parameters: {{weight: 0.3}}
dtype: bfloat16
""",
    # The common TIES config: the base listed among the models, global parameters, bf16.
    "ties_bf16": """
models:
  - model: {base}
  - model: {e0}
    parameters:
      density: 0.5
      weight: 0.6
  - model: {e1}
    parameters:
      density: [0.3, 0.8]
      weight: 0.5
merge_method: ties
base_model: {base}
parameters:
  normalize: true
  int8_mask: true
dtype: bfloat16
""",
    # SLERP with filter lists and layer gradients, as in countless Hub model cards.
    "slerp_bf16": """
slices: null
merge_method: slerp
base_model: {e0}
models:
  - model: {e0}
  - model: {e1}
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5
dtype: bfloat16
""",
    # No dtype: mergekit computes in the inputs' dtype (bf16 here) and stores float32.
    "task_arithmetic_no_dtype": """
merge_method: task_arithmetic
base_model: {base}
models:
  - model: {e0}
    parameters: {{weight: 0.8}}
  - model: {e2}
    parameters: {{weight: 0.4}}
out_dtype: float32
""",
}


@pytest.fixture(scope="module")
def bf16_models(tmp_path_factory):
    return build_tiny_models(tmp_path_factory.mktemp("bf16_models"), dtype=torch.bfloat16)


def _write_configs(models, root: Path) -> dict[str, Path]:
    fmt = {"base": models.base, **{f"e{i}": p for i, p in enumerate(models.experts)}}
    paths = {}
    for name, text in CONFIGS.items():
        text = text.replace("slices: null\n", "")  # (kept above only to read like a real file)
        paths[name] = root / f"{name}.yaml"
        paths[name].write_text(text.format(**fmt))
    return paths


@pytest.fixture(scope="module")
def mergekit_results(bf16_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("mk_configs")
    configs = _write_configs(bf16_models, root)
    jobs = [(str(cfg), str(root / f"out_{name}")) for name, cfg in configs.items()]
    run_mergekit_yaml(jobs)
    return configs, {name: root / f"out_{name}" for name in configs}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_mergekit_config_gives_mergekit_tensors(name, mergekit_results, tmp_path):
    configs, outputs = mergekit_results
    recipe = MergeRecipe.from_yaml(configs[name])
    ours = load_folder(merge_to_folder(recipe, tmp_path / "ours", device="cpu", progress=False))
    theirs = load_folder(outputs[name])
    assert set(ours) == set(theirs)
    for tensor in theirs:
        assert ours[tensor].dtype == theirs[tensor].dtype, tensor
        torch.testing.assert_close(ours[tensor], theirs[tensor], rtol=0, atol=0)


def test_the_cli_merges_a_mergekit_config(mergekit_results, tmp_path, capsys):
    configs, outputs = mergekit_results
    assert main(["merge", str(configs["ties_bf16"]), "--out", str(tmp_path / "m")]) == 0
    ours, theirs = load_folder(tmp_path / "m"), load_folder(outputs["ties_bf16"])
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_tokenizer_source_becomes_the_recipes_tokenizer(mergekit_results):
    """(mergekit needs real tokenizers for it: tests/test_mergekit_tokenizer.py merges them.)"""
    configs, _ = mergekit_results
    text = configs["ties_bf16"].read_text()
    plain = MergeRecipe.from_yaml(text)
    for source in ("base", "union", plain.base):
        recipe = MergeRecipe.from_yaml(text + f"tokenizer_source: {source}\n")
        assert recipe.tokenizer is not None and recipe.tokenizer.source == source
        assert recipe.model_copy(update={"tokenizer": None}) == plain
        assert recipe.recipe_hash() != plain.recipe_hash()


def test_own_recipes_still_export_to_equivalent_mergekit_yaml(bf16_models, tmp_path):
    """A hub-merge recipe -> --mergekit-yaml -> read back as a mergekit config: same recipe."""
    e0, e1 = (str(p) for p in bf16_models.experts[:2])
    recipe = MergeRecipe.from_dict(
        {
            "method": "ties",
            "base": str(bf16_models.base),
            "models": [
                {"model": e0, "parameters": {"weight": 0.5, "density": 0.4}},
                {"model": e1, "parameters": {"weight": 0.5, "density": 0.6}},
            ],
            "dtype": "bfloat16",
        }
    )
    again = MergeRecipe.from_yaml(recipe.to_mergekit_yaml())
    assert again.method == recipe.method and again.base == recipe.base
    assert again.models == recipe.models and again.dtype == "bfloat16"
    assert again.compute_torch_dtype() == torch.float32


@pytest.mark.parametrize(
    ("text", "names"),
    [
        (
            "merge_method: passthrough\nslices:\n  - sources: [{model: a, layer_range: [0, 2]}]\n"
            "    residual_weight: 0.5\n",
            "residual_weight",
        ),
        ("merge_method: linear\nmodels: [{model: a}]\nmodulez: 1\n", "modulez"),
        (
            "merge_method: linear\nmodels: [{model: a}]\ntokenizer_source: union\n"
            "tokenizer: {source: base}\n",
            "tokenizer_source",
        ),
        ("merge_method: ties\nbase_model: b\nmodels: [{model: c+lora}]\n", "models[0]"),
        ("merge_method: linear\nmodels: [{model: a, weight: 1}]\n", "models[0]"),
    ],
)
def test_unsupported_mergekit_keys_are_named(text, names):
    with pytest.raises(ConfigError) as err:
        MergeRecipe.from_yaml(text)
    message = str(err.value)
    assert names in message and "\n" not in message


def test_recipe_errors_are_one_line_naming_the_field():
    with pytest.raises(ConfigError) as err:
        MergeRecipe.from_yaml(
            "method: ties\nmodels:\n  - {model: a, parameters: {weight: [{value: 1, filtr: x}]}}\ndtype: fp8\n"
        )
    message = str(err.value)
    assert "\n" not in message and "pydantic" not in message and "errors.pydantic" not in message
    assert "`dtype`" in message and "fp8" in message
    with pytest.raises(ConfigError) as err:
        MergeRecipe.from_yaml("method: linear\n")
    assert "`models` is required" in str(err.value)
