"""Adapter output: merged LoRA adapters reload with peft and match the dense merge."""

from __future__ import annotations

import pytest
import torch

from hub_merge.errors import ConfigError
from hub_merge.merge import MergeSession, merge_adapters


def _peft_state(base, adapter):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    return PeftModel.from_pretrained(model, adapter).merge_and_unload().state_dict()


@pytest.mark.parametrize(
    "method, weights", [("linear", [0.3, 0.9]), ("task_arithmetic", [0.7, 0.4])]
)
def test_exact_adapter_matches_dense_merge(method, weights, tiny_models, tmp_path):
    z = tiny_models
    result = merge_adapters(method, z.adapters, weights, tmp_path / "ad")
    assert result.relative_error == 0.0 and result.rank == 8
    reloaded = _peft_state(z.base, result.path)
    s = MergeSession(z.base, device="cpu")
    dense = s.merge(
        method, [s.load(a) for a in z.adapters], model_parameters=[{"weight": w} for w in weights]
    )
    for name, tensor in dense.items():
        torch.testing.assert_close(reloaded[name], tensor, rtol=1e-5, atol=1e-6)
    assert (result.path / "adapter_model.safetensors").stat().st_size < 100_000


def test_compressed_adapter_reports_error(tiny_models, tmp_path):
    z = tiny_models
    exact = merge_adapters("task_arithmetic", z.adapters, [1.0, 1.0], tmp_path / "exact")
    small = merge_adapters("task_arithmetic", z.adapters, [1.0, 1.0], tmp_path / "r2", rank=2)
    assert small.rank == 2 and 0.0 < small.relative_error < 1.0
    from hub_merge.tensors import CheckpointReader

    base = CheckpointReader(z.base)
    full = _peft_state(z.base, exact.path)
    comp = _peft_state(z.base, small.path)
    num = den = 0.0
    for name in full:
        d_full = full[name] - base.get(name)
        num += float(((comp[name] - full[name]) ** 2).sum())
        den += float((d_full**2).sum())
    assert abs((num / den) ** 0.5 - small.relative_error) < 1e-3


def test_adapter_output_refuses_other_methods(tiny_models, tmp_path):
    with pytest.raises(ConfigError, match="linear, task_arithmetic"):
        merge_adapters("ties", tiny_models.adapters, [1, 1], tmp_path / "x")
    assert not (tmp_path / "x").exists()
