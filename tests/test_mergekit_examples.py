"""mergekit's own example configs, as written, against mergekit-yaml's tensors.

The configs live in tests/data/mergekit_examples/ (copied from mergekit's examples and docs, model
names swapped for placeholders filled here with tiny Llama models). Each file's first line says
what hub-merge must do with it: give mergekit-yaml's tensors, or refuse it by name.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch

from hub_merge.cli import main
from hub_merge.errors import ConfigError, HubMergeError, UnknownMethodError, UnusedParameterWarning
from hub_merge.merge import MergeRecipe, merge_to_folder
from tests.fixtures.merge import load_folder, run_mergekit_yaml

EXAMPLES = Path(__file__).parent / "data" / "mergekit_examples"
FILES = sorted(EXAMPLES.glob("*.yml"))


def _expectation(path: Path) -> tuple[str, str]:
    """('mergekit', '') or ('refused', words the message must contain), from the first line."""
    match = re.search(r"expect: (mergekit|refused)\s*(.*)$", path.read_text().splitlines()[0])
    assert match, f"{path.name}: first line must say `expect: mergekit` or `expect: refused ...`"
    return match.group(1), match.group(2).strip()


def _config(path: Path, models, root: Path) -> Path:
    names = {"base": models.base, **{f"e{i}": p for i, p in enumerate(models.experts)}}
    text = path.read_text()
    for key, folder in names.items():
        text = text.replace("{" + key + "}", str(folder))
    out = root / path.name
    out.write_text(text)
    return out


def test_the_examples_are_there_and_each_says_what_to_expect():
    assert len(FILES) == 17  # + llava_linear.yaml, tested on its own below
    kinds = [_expectation(p)[0] for p in FILES]
    assert kinds.count("mergekit") == 14 and kinds.count("refused") == 3
    sliced = [p.stem for p in FILES if "slices:\n" in p.read_text()]
    assert len(sliced) == 5  # slices: stacks, gradient SLERP, per-slice merges and parameters


@pytest.mark.parametrize(
    "path", [p for p in FILES if _expectation(p)[0] == "refused"], ids=lambda p: p.stem
)
def test_refused_examples_are_refused_by_name_in_one_line(path, tiny_models, tmp_path):
    words = _expectation(path)[1]
    config = _config(path, tiny_models, tmp_path)
    with pytest.raises(HubMergeError) as err:
        merge_to_folder(MergeRecipe.from_yaml(config), tmp_path / "out", progress=False)
    assert words in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_a_parameter_the_method_does_not_read_is_warned_once_by_name_and_dropped(
    tiny_models, tmp_path
):
    config = _config(EXAMPLES / "slerp_weight.yml", tiny_models, tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        recipe = MergeRecipe.from_yaml(config)
    ours = [w for w in caught if issubclass(w.category, UnusedParameterWarning)]
    assert len(ours) == 1
    message = str(ours[0].message)
    assert "weight" in message and "'slerp'" in message and "models[1].parameters" in message
    assert all(not e.parameters for e in recipe.models)  # the recipe (and card) say what was used
    assert recipe.parameters["t"]  # what slerp reads is kept


def test_the_cli_warns_in_one_line_and_merges(tiny_models, tmp_path, capsys):
    config = _config(EXAMPLES / "karcher_weight.yml", tiny_models, tmp_path)
    assert main(["merge", str(config), "--out", str(tmp_path / "m")]) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "Ignoring parameter" in line]
    assert len(lines) == 1 and lines[0].startswith("Warning: ")
    assert "normalize (in parameters)" in lines[0] and "weight (in models[0].parameters" in lines[0]


def test_a_shared_parameter_set_per_model_is_ignored_as_mergekit_ignores_it():
    text = (
        "merge_method: ties\nbase_model: b\nmodels:\n"
        "  - model: a\n    parameters: {weight: 1, density: 0.5, normalize: false}\n"
        "parameters: {normalize: true}\n"
    )
    with pytest.warns(UnusedParameterWarning, match=r"normalize \(in models\[0\]\.parameters\)"):
        recipe = MergeRecipe.from_yaml(text)
    assert recipe.parameters == {"normalize": True}
    assert recipe.models[0].parameters == {"weight": 1, "density": 0.5}


def test_a_name_no_method_reads_is_still_refused_with_a_suggestion():
    text = "merge_method: ties\nbase_model: b\nmodels:\n  - {model: a, parameters: {desnity: 1}}\n"
    with pytest.raises(UnknownMethodError, match="desnity.*did you mean 'density'"):
        MergeRecipe.from_yaml(text)
    with pytest.raises(ConfigError, match="`modulez`"):
        MergeRecipe.from_yaml("merge_method: linear\nmodels: [{model: a}]\nmodulez: 1\n")


def test_own_recipes_ignore_unused_parameters_at_merge_time_with_a_warning(tiny_models, tmp_path):
    e0, e1 = (str(p) for p in tiny_models.experts[:2])
    recipe = MergeRecipe.from_dict(
        {
            "method": "slerp",
            "base": e0,
            "models": [{"model": e1, "parameters": {"weight": 0.3}}],
            "parameters": {"t": 0.5},
        }
    )
    with pytest.warns(UnusedParameterWarning, match="weight"):
        merge_to_folder(recipe, tmp_path / "out", progress=False)
    plain = recipe.model_copy(
        update={"models": [recipe.models[0].model_copy(update={"parameters": {}})]}
    )
    merge_to_folder(plain, tmp_path / "plain", progress=False)
    a, b = load_folder(tmp_path / "out"), load_folder(tmp_path / "plain")
    assert all(torch.equal(a[k], b[k]) for k in b)


# --- against mergekit-yaml (one subprocess for all configs) -----------------------------------


@pytest.fixture(scope="module")
def mergekit_outputs(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("mk_examples")
    configs = {
        p.stem: _config(p, tiny_models, root) for p in FILES if _expectation(p)[0] == "mergekit"
    }
    # arcee_fusion: mergekit stores its kernel's float32 unless out_dtype is set (see below)
    text = configs["arcee_fusion"].read_text() + "out_dtype: float32\n"
    configs["arcee_fusion_f32"] = root / "arcee_fusion_f32.yml"
    configs["arcee_fusion_f32"].write_text(text)
    run_mergekit_yaml([(str(c), str(root / f"out_{n}")) for n, c in configs.items()])
    return configs, {n: root / f"out_{n}" for n in configs}


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", [p.stem for p in FILES if _expectation(p)[0] == "mergekit"] + ["arcee_fusion_f32"]
)
def test_examples_give_mergekit_yaml_tensors(name, mergekit_outputs, tmp_path):
    configs, outputs = mergekit_outputs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusedParameterWarning)
        recipe = MergeRecipe.from_yaml(configs[name])
    ours = load_folder(merge_to_folder(recipe, tmp_path / "ours", device="cpu", progress=False))
    theirs = load_folder(outputs[name])
    assert set(ours) == set(theirs)
    for tensor in theirs:
        if name == "arcee_fusion":
            # mergekit's arcee_fusion kernel multiplies by a float32 mask, and mergekit stores a
            # method's result uncast when out_dtype is unset, so its tensors are float32 while
            # its config.json says bfloat16. hub-merge stores the dtype the config names: the
            # same numbers, rounded once to bfloat16 (out_dtype: float32 gives mergekit's bytes).
            assert ours[tensor].dtype == torch.bfloat16 and theirs[tensor].dtype == torch.float32
            assert torch.equal(ours[tensor], theirs[tensor].to(torch.bfloat16)), tensor
        else:
            assert ours[tensor].dtype == theirs[tensor].dtype, tensor
            torch.testing.assert_close(ours[tensor], theirs[tensor], rtol=0, atol=0)


# --- Llava: mergekit keeps only the vision side; hub-merge keeps the language model too -------


@pytest.fixture(scope="module")
def llava_pair(tmp_path_factory):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig
    from transformers import LlavaForConditionalGeneration as Llava

    root = tmp_path_factory.mktemp("llava")
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=16,
        projection_dim=32,
    )
    text = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_index=63)
    folders = []
    for i in range(2):
        torch.manual_seed(i)
        Llava(cfg).save_pretrained(root / f"llava{i}")
        folders.append(root / f"llava{i}")
    config = root / "llava_linear.yaml"
    text_ = (EXAMPLES / "llava_linear.yaml").read_text()
    config.write_text(text_.replace("{e0}", str(folders[0])).replace("{e1}", str(folders[1])))
    return folders, config


def test_a_llava_merge_keeps_its_language_model(llava_pair, tmp_path):
    from transformers import AutoModelForImageTextToText

    folders, config = llava_pair
    out = merge_to_folder(MergeRecipe.from_yaml(config), tmp_path / "ours", progress=False)
    ours, a, b = load_folder(out), load_folder(folders[0]), load_folder(folders[1])
    assert set(ours) == set(a)
    language = [n for n in a if "language_model" in n]
    assert len(language) > 10
    for name in language:
        torch.testing.assert_close(ours[name], (a[name] + b[name]) / 2)
    AutoModelForImageTextToText.from_pretrained(out)


@pytest.mark.slow
def test_mergekit_yaml_drops_a_llavas_language_model(llava_pair, tmp_path):
    folders, config = llava_pair
    run_mergekit_yaml([(str(config), str(tmp_path / "mk"))])
    theirs, ours = load_folder(tmp_path / "mk"), load_folder(folders[0])
    assert not any("language_model" in n or "embed_tokens" in n for n in theirs)
    assert len(theirs) < len(ours)


def test_plan_and_merge_of_one_recipe_warn_once(tiny_models, tmp_path, capsys):
    """`merge` checks the recipe three times (method, plan, engine): one warning, not three."""
    e0, e1 = (str(p) for p in tiny_models.experts[:2])
    path = tmp_path / "recipe.yaml"
    path.write_text(
        f"method: slerp\nbase: {e0}\nmodels:\n  - {{model: {e1}, parameters: {{weight: 0.4}}}}\n"
        "parameters: {t: 0.5}\n"
    )
    assert main(["merge", str(path), "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert err.count("Ignoring parameter(s) that method 'slerp' does not use") == 1
