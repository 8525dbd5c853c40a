"""One-line errors on the merge path: plan refuses what merge would refuse, with the same words.

And the one PEFT case that used to be refused with a misleading message: an adapter whose
``modules_to_save`` replaces the tied ``lm_head`` of its base now merges as PEFT merges it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hub_merge.cli import main
from hub_merge.errors import ConfigError, HubMergeError, UnsupportedRepoError
from hub_merge.merge import MergeRecipe, merge_to_folder
from hub_merge.plan import plan_recipe
from tests.fixtures.merge import load_folder


def _della(models, epsilon: float) -> MergeRecipe:
    return MergeRecipe.from_dict(
        {
            "method": "della",
            "base": str(models.base),
            "models": [
                {"model": str(models.experts[0]), "parameters": {"weight": 0.5, "density": 0.5}},
                {
                    "model": str(models.experts[1]),
                    # fine on the attention, out of range on the MLPs
                    "parameters": {
                        "weight": 0.5,
                        "density": 0.5,
                        "epsilon": [{"filter": "mlp", "value": epsilon}, {"value": 0.1}],
                    },
                },
            ],
            "seed": 1,
        }
    )


def test_della_epsilon_out_of_range_is_refused_by_plan_and_merge_alike(tiny_models, tmp_path):
    recipe = _della(tiny_models, 0.6)
    plan = plan_recipe(recipe)
    assert not plan.ok
    [issue] = [i for i in plan.issues if i.blocking]
    assert "epsilon" in issue.detail and "mlp" in issue.detail and "below 0.5" in issue.detail
    with pytest.raises(ConfigError) as err:
        merge_to_folder(recipe, tmp_path / "out", progress=False)
    assert str(err.value) == issue.detail  # the same rule, the same words
    assert not (tmp_path / "out").exists()
    # inside the range both pass, and the merge runs
    assert plan_recipe(_della(tiny_models, 0.3)).ok
    merge_to_folder(_della(tiny_models, 0.3), tmp_path / "ok", progress=False)


def test_a_value_of_the_wrong_type_in_a_filter_is_one_line_before_any_weight(tiny_models, tmp_path):
    e0, e1 = (str(p) for p in tiny_models.experts[:2])
    recipe = MergeRecipe.from_dict(
        {
            "method": "slerp",
            "base": e0,
            "models": [e1],
            "parameters": {"t": [{"filter": "mlp", "value": "half"}, {"value": 0.5}]},
        }
    )
    assert not plan_recipe(recipe).ok
    with pytest.raises(ConfigError, match=r"'slerp'.*mlp.*invalid") as err:
        merge_to_folder(recipe, tmp_path / "out", progress=False)
    assert "\n" not in str(err.value)


def test_the_cli_merge_of_a_bad_della_exits_with_one_error_and_no_traceback(
    tiny_models, tmp_path, capsys
):
    path = tmp_path / "della.yaml"
    path.write_text(_della(tiny_models, 0.7).to_yaml())
    assert main(["merge", str(path), "--out", str(tmp_path / "out")]) != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "epsilon" in err
    [line] = [x for x in err.splitlines() if x.startswith("Error:")]
    assert line.startswith("Error: Method 'della': models[1] has density 0.5 and epsilon 0.7")
    assert len([x for x in err.splitlines() if x.strip()]) == 1  # one line, nothing else
    assert main(["plan", str(path)]) != 0


def test_a_value_error_only_the_weights_reveal_is_a_one_line_merge_error(
    tiny_models, tmp_path, monkeypatch
):
    from mergekit import merge_methods

    from hub_merge.errors import MergeError

    def antipodal(*args, **kwargs):
        raise ValueError("The weighted sum of the input tensors is zero. This occurs when ...")

    monkeypatch.setattr(merge_methods, "merge_tensors", antipodal)
    e0, e1 = (str(p) for p in tiny_models.experts[:2])
    recipe = MergeRecipe.from_dict(
        {
            "method": "multislerp",
            "models": [{"model": m, "parameters": {"weight": 1}} for m in (e0, e1)],
        }
    )
    with pytest.raises(MergeError, match=r"'multislerp' failed on tensor '.*': The weighted sum"):
        merge_to_folder(recipe, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_a_mergekit_moe_config_says_to_use_hub_merge_moe_once():
    text = (
        "base_model: org/base\ngate_mode: hidden\nexperts_per_token: 2\nexperts:\n"
        "  - {source_model: org/math, positive_prompts: [solve, compute]}\n"
        "  - {source_model: org/code, positive_prompts: [python]}\n"
    )
    with pytest.raises(ConfigError) as err:
        MergeRecipe.from_yaml(text)
    message = str(err.value)
    assert "hub-merge moe --base org/base --expert org/math --prompts 'solve;;compute'" in message
    assert "--router hidden-mean" in message and "--top-k 2" in message
    assert message.count("fields:") == 0 and "\n" not in message


@pytest.fixture(scope="module")
def tied(tmp_path_factory):
    """A base with tied embeddings, a LoRA whose modules_to_save replaces lm_head, a DoRA."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("tied")
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(root / "base")
    folders = {"base": root / "base"}
    for name, extra in (
        ("head", {"modules_to_save": ["lm_head"]}),
        ("dora", {"use_dora": True}),
    ):
        model = AutoModelForCausalLM.from_pretrained(root / "base")
        peft_model = get_peft_model(
            model, LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False, **extra)
        )
        with torch.no_grad():
            for n, p in peft_model.named_parameters():
                if "modules_to_save" in n:
                    p.add_(0.05 * torch.randn_like(p))
        peft_model.save_pretrained(root / name)
        folders[name] = root / name
        if name == "head":
            peft_model.merge_and_unload().save_pretrained(root / "head_peft")
            folders["head_peft"] = root / "head_peft"
    return folders


def _adapter_recipe(base: Path, adapter: Path) -> MergeRecipe:
    return MergeRecipe.from_dict(
        {
            "method": "task_arithmetic",
            "base": str(base),
            "models": [{"model": str(adapter), "parameters": {"weight": 1.0}}],
        }
    )


def test_a_tied_lm_head_in_modules_to_save_merges_untied_as_peft_does(tied, tmp_path):
    from transformers import AutoModelForCausalLM

    recipe = _adapter_recipe(tied["base"], tied["head"])
    assert plan_recipe(recipe).ok
    out = merge_to_folder(recipe, tmp_path / "out", progress=False)
    ours, peft_merged = load_folder(out), load_folder(tied["head_peft"])
    assert "lm_head.weight" in ours and "lm_head.weight" not in load_folder(tied["base"])
    assert set(ours) == set(peft_merged)
    for name, tensor in peft_merged.items():
        torch.testing.assert_close(ours[name], tensor, rtol=0, atol=1e-6)
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False
    model = AutoModelForCausalLM.from_pretrained(out)
    assert torch.equal(model.lm_head.weight.detach(), peft_merged["lm_head.weight"])
    assert not torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)


def test_dora_is_refused_by_plan_with_merges_words(tied, tmp_path):
    recipe = _adapter_recipe(tied["base"], tied["dora"])
    plan = plan_recipe(recipe)
    assert not plan.ok
    details = " ".join(i.detail for i in plan.issues if i.blocking)
    assert "DoRA" in details and "merge_and_unload" in details
    with pytest.raises(UnsupportedRepoError, match="DoRA"):
        merge_to_folder(recipe, tmp_path / "out", progress=False)
    with pytest.raises(HubMergeError):
        plan.raise_for_issues()
