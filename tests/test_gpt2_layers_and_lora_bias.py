"""GPT-2-style models (``transformer.h.N`` names, Conv1D layers with biases) through merge and kinship.

Two things Llama-only tests never see: the block index of an ``h.N`` name (SLERP gradients and
kinship's per-layer breakdown read it through the one parser in ``hub_merge.layers``), and LoRA
adapters trained with ``lora_bias=True``, whose bias delta must be merged exactly, or refused when
the base has no bias to shift.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from hub_merge.errors import IncompatibleModelsError, KinshipError, LoraBiasError
from hub_merge.kinship import kinship_matrix
from hub_merge.layers import layer_index, layer_position, num_layers
from hub_merge.merge import MergeRecipe, ModelEntry, merge_to_folder

N_LAYER = 3


@dataclass
class Gpt2Models:
    base: Path
    expert: Path  # base + noise on every tensor
    bias_lora: Path  # peft LoRA on c_attn with lora_bias=True (fan_in_fan_out Conv1D)
    bias_lora_full: Path  # the same adapter merged by peft (merge_and_unload)
    llama_base: Path
    llama_bias_lora: Path  # lora_bias=True on q_proj, which has no bias in Llama


def _gpt2(seed: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=32, n_positions=16, n_embd=16, n_layer=N_LAYER, n_head=2)
    return GPT2LMHeadModel(cfg)


def _lora(model, folder: Path, base_folder: Path, **cfg):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(init_lora_weights=False, **cfg))
    torch.manual_seed(7)
    for name, p in peft_model.named_parameters():
        if "lora_" in name:
            p.data = torch.randn_like(p) * 0.1
    peft_model.save_pretrained(folder)
    meta = json.loads((folder / "adapter_config.json").read_text())
    meta["base_model_name_or_path"] = str(base_folder)
    (folder / "adapter_config.json").write_text(json.dumps(meta))
    return peft_model


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory) -> Gpt2Models:
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("gpt2")
    base = _gpt2(0)
    base.save_pretrained(root / "base")
    expert = _gpt2(0)
    with torch.no_grad():
        for p in expert.parameters():
            p.add_(0.05 * torch.randn_like(p))
    expert.save_pretrained(root / "expert")
    peft_model = _lora(
        _gpt2(0),
        root / "bias_lora",
        root / "base",
        r=2,
        lora_alpha=4,
        target_modules=["c_attn"],
        fan_in_fan_out=True,
        lora_bias=True,
    )
    peft_model.merge_and_unload().save_pretrained(root / "bias_lora_full")

    torch.manual_seed(1)
    llama_cfg = LlamaConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=16,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(llama_cfg).save_pretrained(root / "llama")
    with pytest.warns(UserWarning, match="no bias"):  # peft itself says it cannot be merged
        _lora(
            LlamaForCausalLM.from_pretrained(root / "llama"),
            root / "llama_bias_lora",
            root / "llama",
            r=2,
            lora_alpha=2,
            target_modules=["q_proj"],
            lora_bias=True,
        )
    return Gpt2Models(
        base=root / "base",
        expert=root / "expert",
        bias_lora=root / "bias_lora",
        bias_lora_full=root / "bias_lora_full",
        llama_base=root / "llama",
        llama_bias_lora=root / "llama_bias_lora",
    )


# --- the one layer-index parser -----------------------------------------------------------------


@pytest.mark.parametrize(
    "name, index",
    [
        ("model.layers.3.self_attn.q_proj.weight", 3),  # Llama, Mistral, Qwen
        ("transformer.h.11.attn.c_attn.bias", 11),  # GPT-2 as GPT2LMHeadModel saves it
        ("h.2.mlp.c_fc.weight", 2),  # GPT-2 saved without the transformer. prefix
        ("gpt_neox.layers.0.attention.dense.weight", 0),
        ("transformer.blocks.5.ffn.up_proj.weight", 5),  # MPT
        ("bert.encoder.layer.7.output.dense.weight", 7),
        ("encoder.block.1.layer.0.SelfAttention.q.weight", 1),  # T5: the block, not the sublayer
        ("model.embed_tokens.weight", None),
        ("transformer.wte.weight", None),
        ("lm_head.weight", None),
        ("model.norm.weight", None),
        ("transformer.ln_f.bias", None),
    ],
)
def test_layer_index_reads_every_common_naming(name, index):
    assert layer_index(name) == index


def test_num_layers_from_gpt2_config_and_names(gpt2):
    names = list(load_file(gpt2.base / "model.safetensors"))
    assert num_layers(names, config=gpt2.base) == N_LAYER  # GPT-2 spells it n_layer
    assert num_layers(names) == N_LAYER  # and the names alone agree
    assert layer_position("transformer.h.1.attn.c_attn.weight", N_LAYER) == 0.5


def test_slerp_gradient_gives_each_gpt2_block_its_own_t(gpt2, tmp_path):
    """t = [0, 1] over 3 blocks: block 0 is the base (t=0), block 2 the expert (t=1).

    With a parser that misses ``h.N`` every block got t=0 and the whole merge was the base.
    """
    from mergekit.merge_methods.slerp import slerp

    recipe = MergeRecipe(
        method="slerp",
        base=str(gpt2.base),
        models=[ModelEntry(model=str(gpt2.expert))],
        parameters={"t": [0.0, 1.0]},
    )
    out = load_file(
        merge_to_folder(recipe, tmp_path / "out", device="cpu", progress=False)
        / "model.safetensors"
    )
    base = load_file(gpt2.base / "model.safetensors")
    expert = load_file(gpt2.expert / "model.safetensors")
    name = "transformer.h.{}.mlp.c_fc.weight"
    torch.testing.assert_close(out[name.format(0)], base[name.format(0)], rtol=0, atol=1e-6)
    torch.testing.assert_close(out[name.format(2)], expert[name.format(2)], rtol=0, atol=1e-6)
    a, b = base[name.format(1)], expert[name.format(1)]
    # mergekit slerps a whole tensor as one vector (a batch of one row)
    middle = slerp(torch.tensor(0.5), a.reshape(1, -1), b.reshape(1, -1)).reshape(a.shape)
    torch.testing.assert_close(out[name.format(1)], middle, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out[name.format(1)], base[name.format(1)])
    # outside the blocks mergekit uses t=0: the embeddings stay the base's
    torch.testing.assert_close(out["transformer.wte.weight"], base["transformer.wte.weight"])


def test_kinship_per_layer_breakdown_has_every_gpt2_block(gpt2):
    result = kinship_matrix([gpt2.expert, gpt2.bias_lora_full], gpt2.base, device="cpu")
    assert sorted(result.layers) == list(range(N_LAYER))


# --- LoRA adapters with lora_bias=True ----------------------------------------------------------


def test_lora_bias_adapter_merges_exactly_like_peft(gpt2, tmp_path):
    recipe = MergeRecipe(
        method="task_arithmetic",
        base=str(gpt2.base),
        models=[ModelEntry(model=str(gpt2.bias_lora), parameters={"weight": 1.0})],
    )
    out = load_file(
        merge_to_folder(recipe, tmp_path / "out", device="cpu", progress=False)
        / "model.safetensors"
    )
    want = load_file(gpt2.bias_lora_full / "model.safetensors")
    base = load_file(gpt2.base / "model.safetensors")
    bias = "transformer.h.1.attn.c_attn.bias"
    assert not torch.allclose(want[bias], base[bias])  # the adapter's bias delta is real
    assert set(out) == set(want)
    for name in want:
        torch.testing.assert_close(out[name], want[name], rtol=1e-5, atol=1e-6)


def test_lora_bias_adapter_kinship_counts_its_bias_delta(gpt2):
    """The adapter and peft's merge of it have the same task vector: distance 0, correlation 1."""
    models = [gpt2.bias_lora, gpt2.bias_lora_full, gpt2.expert]
    dist = kinship_matrix(models, gpt2.base, "euclidean", device="cpu")
    assert dist.pair(0, 1) == pytest.approx(0.0, abs=1e-6)
    corr = kinship_matrix(models, gpt2.base, "pearson", device="cpu")
    assert corr.pair(0, 1) == pytest.approx(1.0, abs=1e-9)
    # and against an independent float64 computation over the dense deltas
    base = {k: v.double() for k, v in load_file(gpt2.base / "model.safetensors").items()}
    flat = []
    for folder in (gpt2.bias_lora_full, gpt2.expert):
        sd = load_file(folder / "model.safetensors")
        flat.append(np.concatenate([(sd[k].double() - v).numpy().ravel() for k, v in base.items()]))
    assert corr.pair(0, 2) == pytest.approx(float(np.corrcoef(flat)[0, 1]), abs=1e-9)


def test_lora_bias_on_a_base_without_biases_is_refused_naming_the_adapter(gpt2, tmp_path):
    recipe = MergeRecipe(
        method="task_arithmetic",
        base=str(gpt2.llama_base),
        models=[ModelEntry(model=str(gpt2.llama_bias_lora), parameters={"weight": 1.0})],
    )
    with pytest.raises(LoraBiasError, match="lora_bias=True") as err:
        merge_to_folder(recipe, tmp_path / "out", device="cpu", progress=False)
    assert str(gpt2.llama_bias_lora) in str(err.value)
    assert isinstance(err.value, IncompatibleModelsError)
    assert not (tmp_path / "out").exists()
    with pytest.raises(KinshipError, match="lora_bias=True") as err:
        kinship_matrix([gpt2.llama_bias_lora, gpt2.llama_base], gpt2.llama_base, device="cpu")
    assert str(gpt2.llama_bias_lora) in str(err.value)


def test_factor_wise_adapter_mixing_refuses_lora_bias_naming_the_adapter(gpt2):
    from hub_merge.merge.adapter_mix import FactorMix

    with pytest.raises(LoraBiasError, match="lora_bias=True") as err:
        FactorMix([gpt2.bias_lora])
    assert str(gpt2.bias_lora) in str(err.value)
