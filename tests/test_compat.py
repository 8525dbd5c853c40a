"""Compatibility checks before a merge: each mismatch is a typed error naming model and field."""

from __future__ import annotations

import json
import shutil

import pytest

from hub_merge.compat import check_compatible, compatibility_problems
from hub_merge.errors import IncompatibleModelsError
from hub_merge.hub import inspect_folder


def test_compatible_models_pass(hubio_models):
    base = inspect_folder(hubio_models.base)
    check_compatible(
        base, [inspect_folder(hubio_models.expert), inspect_folder(hubio_models.adapter)]
    )
    assert compatibility_problems(base, [inspect_folder(hubio_models.expert)]) == []


def test_tensor_shape_mismatch_names_the_tensor(hubio_models, tmp_path):
    # Same architecture fields, different hidden size: shapes differ tensor by tensor.
    base = inspect_folder(hubio_models.base)
    with pytest.raises(IncompatibleModelsError) as info:
        check_compatible(base, [inspect_folder(hubio_models.wide)])
    msg = str(info.value)
    assert str(hubio_models.wide) in msg and str(hubio_models.base) in msg
    assert "tensor model.embed_tokens.weight" in msg and "(32, 32) vs (32, 16)" in msg


def test_architecture_mismatch_names_the_field(hubio_models, tmp_path):
    other = tmp_path / "mistral"
    shutil.copytree(hubio_models.expert, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["model_type"], cfg["architectures"] = "mistral", ["MistralForCausalLM"]
    (other / "config.json").write_text(json.dumps(cfg))
    problems = compatibility_problems(inspect_folder(hubio_models.base), [inspect_folder(other)])
    assert {p.what for p in problems} == {"config.model_type", "config.architectures"}
    assert all(p.model == str(other) for p in problems)


def test_missing_tensor_is_reported(hubio_models, tmp_path):
    from safetensors.torch import load_file, save_file

    pruned = tmp_path / "pruned"
    shutil.copytree(hubio_models.expert, pruned)
    tensors = load_file(str(pruned / "model.safetensors"))
    del tensors["lm_head.weight"]
    save_file(tensors, str(pruned / "model.safetensors"), metadata={"format": "pt"})
    problems = compatibility_problems(inspect_folder(hubio_models.base), [inspect_folder(pruned)])
    assert [p.what for p in problems] == ["tensor lm_head.weight"]
    assert "missing" in problems[0].detail


def test_vocabulary_mismatch_names_a_token(hubio_models):
    with pytest.raises(IncompatibleModelsError, match="tokenizer vocabulary") as info:
        check_compatible(
            inspect_folder(hubio_models.base), [inspect_folder(hubio_models.other_vocab)]
        )
    assert "'w1'" in str(info.value) or "'w2'" in str(info.value)


def test_adapter_of_another_base_is_refused(hubio_models, tmp_path):
    moved = tmp_path / "adapter_elsewhere"
    shutil.copytree(hubio_models.adapter, moved)
    cfg = json.loads((moved / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "someone/other-base"
    (moved / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(IncompatibleModelsError, match="base_model_name_or_path") as info:
        check_compatible(inspect_folder(hubio_models.base), [inspect_folder(moved)])
    assert "someone/other-base" in str(info.value)


def test_adapter_target_shapes_must_match(hubio_models):
    # The wide adapter claims our base, but its factors are for hidden size 32.
    problems = compatibility_problems(
        inspect_folder(hubio_models.base), [inspect_folder(hubio_models.wide_adapter)]
    )
    assert problems and all(p.what.startswith("tensor model.layers.") for p in problems)
    assert "(32, 32) vs base (16, 16)" in problems[0].detail


def test_adapter_cannot_be_the_base(hubio_models):
    with pytest.raises(IncompatibleModelsError, match="must be a full model"):
        check_compatible(
            inspect_folder(hubio_models.adapter), [inspect_folder(hubio_models.expert)]
        )
