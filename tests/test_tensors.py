"""ShardedWriter: standard safetensors shards, an index, and all-or-nothing output."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from hub_merge.errors import IncompatibleModelsError
from hub_merge.tensors import CheckpointReader, ShardedWriter


def _layout():
    return {
        "a": ((64, 64), torch.bfloat16),
        "b": ((100,), torch.float32),
        "c": ((32, 64), torch.float16),
        "i": ((3,), torch.int64),
    }


def test_sharded_writer_round_trip(tmp_path):
    tensors = {
        "a": torch.randn(64, 64).bfloat16(),
        "b": torch.randn(100),
        "c": torch.randn(32, 64).half(),
        "i": torch.tensor([1, 2, 3]),
    }
    with ShardedWriter(tmp_path / "m", _layout(), max_shard_bytes=8192, metadata={"k": "v"}) as w:
        for name in reversed(list(tensors)):  # any order
            w.write(name, tensors[name])
        assert not (tmp_path / "m").exists()  # nothing looks like a model until finalised
    index = json.loads((tmp_path / "m" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 2
    reader = CheckpointReader(tmp_path / "m")
    for name, t in tensors.items():
        assert torch.equal(reader.get(name), t)
    shard = tmp_path / "m" / index["weight_map"]["a"]
    with safe_open(str(shard), "pt") as f:
        assert f.metadata()["k"] == "v"


def test_single_file_and_incomplete_output(tmp_path):
    w = ShardedWriter(tmp_path / "one", _layout())
    assert w.files == ["model.safetensors"]
    w.write("a", torch.zeros(64, 64))
    with pytest.raises(IncompatibleModelsError, match="never written"):
        w.finalize()
    assert list(tmp_path.iterdir()) == []


def test_error_inside_with_removes_everything(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardedWriter(tmp_path / "m", _layout()) as w:
            w.write("b", torch.ones(100))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_adapter_delta_includes_a_saved_embedding_beside_its_factors(tmp_path):
    """peft loads a saved embedding ``base_layer`` over the base's, then adds B·A on top."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from safetensors.torch import load_file, save_file
    from transformers import LlamaForCausalLM

    from hub_merge.tensors import LoraAdapterReader
    from tests.fixtures.hubio import tiny_llama

    base_dir = tiny_llama(tmp_path / "base")
    torch.manual_seed(0)
    cfg = LoraConfig(
        r=4, lora_alpha=8, target_modules=["embed_tokens", "q_proj"], init_lora_weights=False
    )
    peft_model = get_peft_model(LlamaForCausalLM.from_pretrained(base_dir), cfg)
    peft_model.save_pretrained(tmp_path / "adapter", save_embedding_layers=True)
    weights = tmp_path / "adapter" / "adapter_model.safetensors"
    state = load_file(weights)
    key = next(k for k in state if k.endswith("embed_tokens.base_layer.weight"))
    state[key] = state[key] + 0.5 * torch.randn_like(state[key])  # e.g. trained new-token rows
    save_file(state, weights)

    name = "model.embed_tokens.weight"
    base = LlamaForCausalLM.from_pretrained(base_dir)
    base_tensor = base.state_dict()[name].clone()
    expected = PeftModel.from_pretrained(base, tmp_path / "adapter").merge_and_unload().state_dict()
    reader = LoraAdapterReader(tmp_path / "adapter")
    assert name in reader.names and name not in reader.plain_names()  # factors + a saved layer
    delta = reader.delta(name, base_tensor)
    torch.testing.assert_close(base_tensor + delta, expected[name], rtol=1e-5, atol=1e-5)
    q = "model.layers.0.self_attn.q_proj.weight"
    q_base = LlamaForCausalLM.from_pretrained(base_dir).state_dict()[q]
    q_delta = LoraAdapterReader(tmp_path / "adapter").delta(q, q_base)
    torch.testing.assert_close(q_base + q_delta, expected[q], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_lowrank_gives_each_module_its_delta_in_the_base_layout_as_peft_merges_it(arch, tmp_path):
    """Scale folded in, Conv1D (fan_in_fan_out) and embeddings transposed: left @ right is peft's
    merged weight minus the base's, for every module the adapter changes by factors alone."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaForCausalLM

    from hub_merge.tensors import LoraAdapterReader
    from tests.fixtures.hubio import tiny_llama

    torch.manual_seed(0)
    if arch == "gpt2":
        cfg = GPT2Config(vocab_size=32, n_positions=16, n_embd=16, n_layer=2, n_head=2)
        GPT2LMHeadModel(cfg).save_pretrained(tmp_path / "base")
        load, targets = GPT2LMHeadModel.from_pretrained, ["c_attn", "wte"]
        extra = {"fan_in_fan_out": True}
    else:
        tiny_llama(tmp_path / "base")
        load, targets, extra = LlamaForCausalLM.from_pretrained, ["q_proj", "embed_tokens"], {}
    lora = LoraConfig(
        r=2, lora_alpha=3, target_modules=targets, init_lora_weights=False, **extra
    )  # scale 1.5: not a power of two
    adapter = get_peft_model(load(tmp_path / "base"), lora)
    adapter.save_pretrained(tmp_path / "adapter", save_embedding_layers=False)
    base = load(tmp_path / "base").state_dict()
    merged = PeftModel.from_pretrained(load(tmp_path / "base"), tmp_path / "adapter")
    expected = merged.merge_and_unload().state_dict()

    reader = LoraAdapterReader(tmp_path / "adapter")
    assert reader.plain_names() == reader.names and reader.dtype == torch.float32
    kinds = set()
    for name in reader.plain_names():
        low = reader.lowrank(name, dtype=torch.float64)
        assert low is not None and low.scale == 1.0 and low.shape == tuple(base[name].shape)
        kinds.add((low.transpose, reader.is_embedding(name)))
        delta = (low.left @ low.right).float()
        torch.testing.assert_close(base[name] + delta, expected[name], rtol=1e-5, atol=1e-6)
        half = reader.lowrank(name, dtype=torch.float64, coefficient=0.5)
        torch.testing.assert_close(half.left @ half.right, 0.5 * (low.left @ low.right))
    # an embedding is transposed, and GPT-2's Conv1D too; Llama's Linear is not
    assert kinds == (
        {(True, True), (True, False)} if arch == "gpt2" else {(True, True), (False, False)}
    )
    assert reader.lowrank("no.such.weight") is None
