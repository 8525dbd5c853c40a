"""Model kinship: the one-pass matrix against a direct float64 computation on flattened deltas.

The reference deltas of adapters come from peft itself (``merge_and_unload``), so the factored
path is checked against the library's own notion of an adapter's delta, scale and orientation.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from hub_merge.cli import main
from hub_merge.errors import KinshipError
from hub_merge.kinship import (
    AdapterSource,
    StateDictSource,
    kinship,
    kinship_matrix,
    layer_index,
    tensor_group,
)

VOCAB = 48


def _config(vocab: int = VOCAB):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )


def _model(sd: dict[str, torch.Tensor] | None = None, vocab: int = VOCAB):
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(_config(vocab))
    if sd is not None:
        model.load_state_dict(sd)
    return model


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> dict[str, Path]:
    """A random base, three full experts (one with a larger vocabulary) and three adapters."""
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("kin")
    torch.manual_seed(0)
    base = _model()
    base_sd = {k: v.clone() for k, v in base.state_dict().items()}
    base.save_pretrained(root / "base")
    shared = {k: torch.randn_like(v) * 0.02 for k, v in base_sd.items()}
    paths = {"base": root / "base"}
    for i, mix in enumerate([0.0, 0.5, 0.9]):
        sd = {
            k: v + mix * shared[k] + (1 - mix) * 0.02 * torch.randn_like(v)
            for k, v in base_sd.items()
        }
        name = f"expert{i}"
        if i == 2:  # a larger vocabulary: embedding and head rows beyond the base's are extra
            model = _model(vocab=VOCAB + 5)
            big = model.state_dict()
            for k, v in sd.items():
                if big[k].shape != v.shape:
                    big[k][:VOCAB] = v
                else:
                    big[k] = v
            model.load_state_dict(big)
        else:
            model = _model(sd)
        model.save_pretrained(root / name)
        paths[name] = root / name
    adapter_cfgs = {
        "lora_attn": LoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False
        ),
        # embeddings (transposed factors), rsLoRA scale and per-module rank/alpha patterns
        "lora_emb": LoraConfig(
            r=4,
            lora_alpha=16,
            use_rslora=True,
            target_modules=["embed_tokens", "o_proj", "up_proj", "down_proj"],
            rank_pattern={"down_proj": 2},
            alpha_pattern={"up_proj": 3},
            init_lora_weights=False,
        ),
        # modules_to_save: a full replacement of lm_head
        "lora_head": LoraConfig(
            r=2,
            lora_alpha=2,
            target_modules=["k_proj", "gate_proj"],
            modules_to_save=["lm_head"],
            init_lora_weights=False,
        ),
    }
    for j, (name, cfg) in enumerate(adapter_cfgs.items()):
        torch.manual_seed(100 + j)
        peft_model = get_peft_model(_model(base_sd), cfg)
        for n, p in peft_model.named_parameters():
            if "lora_" in n:
                p.data = torch.randn_like(p) * 0.1
            if "modules_to_save" in n:
                p.data += torch.randn_like(p) * 0.02
        peft_model.save_pretrained(root / name)
        cfg_path = root / name / "adapter_config.json"
        meta = json.loads(cfg_path.read_text())
        meta["base_model_name_or_path"] = str(root / "base")
        cfg_path.write_text(json.dumps(meta))
        paths[name] = root / name
    return paths


@functools.cache
def _reference_delta(path: Path, base_path: Path) -> dict[str, torch.Tensor]:
    """A model's dense delta per base tensor, float64; adapters merged by peft itself."""
    base_sd = load_file(base_path / "model.safetensors")
    if (path / "adapter_config.json").is_file():
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        base_model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
        sd = PeftModel.from_pretrained(base_model, path).merge_and_unload().state_dict()
    else:
        sd = load_file(path / "model.safetensors")
    return {
        k: sd[k][: v.shape[0]].double() - v.double()
        for k, v in base_sd.items()
        if v.is_floating_point()
    }


def _reference(paths: list[Path], base: Path, select=lambda name: True) -> dict[str, np.ndarray]:
    deltas = [_reference_delta(p, base) for p in paths]
    flat = np.stack(
        [np.concatenate([d[k].numpy().ravel() for k in d if select(k)]) for d in deltas]
    )
    norms = np.linalg.norm(flat, axis=1)
    return {
        "pearson": np.corrcoef(flat),
        "cosine": (flat @ flat.T) / np.outer(norms, norms),
        "euclidean": np.linalg.norm(flat[:, None, :] - flat[None, :, :], axis=2),
        "n": flat.shape[1],
    }


FULL = ["expert0", "expert1", "expert2"]
ADAPTERS = ["lora_attn", "lora_emb", "lora_head"]


@pytest.mark.parametrize("metric", ["pearson", "cosine", "euclidean"])
@pytest.mark.parametrize(
    "which", [FULL, ADAPTERS, ["expert0", "lora_attn", "expert2", "lora_emb", "lora_head"]]
)
def test_matches_direct_float64_computation(zoo, metric, which):
    result = kinship_matrix([zoo[n] for n in which], zoo["base"], metric, device="cpu")
    ref = _reference([zoo[n] for n in which], zoo["base"])
    assert result.names == which
    assert result.n_params == ref["n"]
    np.testing.assert_allclose(result.matrix, ref[metric], atol=1e-6, rtol=1e-6)
    np.testing.assert_allclose(result.matrix, result.matrix.T, atol=1e-12)
    diagonal = np.diag(result.matrix)
    np.testing.assert_allclose(diagonal, 0.0 if metric == "euclidean" else 1.0, atol=1e-9)


def test_factored_adapter_equals_dense_state_dict(zoo):
    """An adapter in factored form gives the kinship of its merged (dense) model."""
    from peft import PeftModel

    base_sd = load_file(zoo["base"] / "model.safetensors")
    merged = {
        n: PeftModel.from_pretrained(_model(base_sd), zoo[n]).merge_and_unload().state_dict()
        for n in ADAPTERS
    }
    factored = kinship_matrix(
        [zoo[n] for n in ADAPTERS] + [zoo["expert1"]], zoo["base"], device="cpu"
    )
    dense = kinship_matrix(
        {**merged, "expert1": load_file(zoo["expert1"] / "model.safetensors")},
        base_sd,
        device="cpu",
    )
    assert dense.names == ADAPTERS + ["expert1"]
    np.testing.assert_allclose(factored.matrix, dense.matrix, atol=1e-9)
    assert factored.stats.n == dense.stats.n


def test_groups_and_layers_add_up_to_the_total(zoo):
    result = kinship_matrix(
        [zoo[n] for n in ["expert0", "expert1", "lora_emb", "lora_head"]], zoo["base"]
    )
    groups = list(result.group_stats.values())
    total = groups[0]
    for s in groups[1:]:
        total = total + s
    assert total.n == result.stats.n == result.n_params
    np.testing.assert_allclose(total.gram, result.stats.gram, rtol=1e-12)
    np.testing.assert_allclose(total.sums, result.stats.sums, rtol=1e-10, atol=1e-12)
    assert sorted(result.layers) == [0, 1]
    assert {"attention", "mlp", "embeddings", "norm", "lm_head"} <= set(result.groups)
    # layers plus non-layer tensors (embeddings, final norm, head) also add up
    layered = result.layer_stats[0] + result.layer_stats[1]
    rest = result.group_stats["embeddings"] + result.group_stats["lm_head"]
    rest.n += 32  # model.norm.weight, the one norm outside the blocks (hidden size 32)
    assert layered.n + rest.n == result.n_params


def test_group_restriction_matches_reference(zoo):
    which = ["expert0", "expert1", "lora_attn"]
    result = kinship_matrix([zoo[n] for n in which], zoo["base"], include="attention")
    ref = _reference([zoo[n] for n in which], zoo["base"], select=lambda k: ".self_attn." in k)
    assert result.n_params == ref["n"]
    np.testing.assert_allclose(result.matrix, ref["pearson"], atol=1e-6)
    assert set(result.groups) == {"attention"}
    # a regex restriction to one block gives that block's entry of the per-layer breakdown
    layer1 = kinship_matrix([zoo[n] for n in which], zoo["base"], include=r"layers\.1\.")
    full = kinship_matrix([zoo[n] for n in which], zoo["base"])
    np.testing.assert_allclose(layer1.matrix, full.layers[1], atol=1e-12)
    assert not np.allclose(full.layers[0], full.layers[1])


def test_in_memory_state_dicts_and_pair_helpers(zoo):
    sds = {n: load_file(zoo[n] / "model.safetensors") for n in ["expert0", "expert1"]}
    base_sd = load_file(zoo["base"] / "model.safetensors")
    from_disk = kinship_matrix([zoo["expert0"], zoo["expert1"]], zoo["base"])
    in_memory = kinship_matrix([StateDictSource(sds["expert0"], "a"), sds["expert1"]], base_sd)
    assert in_memory.names == ["a", "model1"]
    np.testing.assert_allclose(in_memory.matrix, from_disk.matrix, atol=1e-12)
    value = kinship(sds["expert0"], sds["expert1"], base_sd)
    assert value == pytest.approx(from_disk.pair("expert0", "expert1"))
    assert from_disk.mean_pairwise() == pytest.approx(value)


def test_tensor_groups_and_layers():
    assert tensor_group("model.layers.3.self_attn.q_proj.weight") == "attention"
    assert tensor_group("model.layers.3.mlp.down_proj.weight") == "mlp"
    assert tensor_group("model.embed_tokens.weight") == "embeddings"
    assert tensor_group("lm_head.weight") == "lm_head"
    assert tensor_group("model.layers.0.input_layernorm.weight") == "norm"
    assert tensor_group("model.norm.weight") == "norm"
    assert tensor_group("transformer.h.2.attn.c_attn.weight") == "attention"
    assert layer_index("transformer.h.2.attn.c_attn.weight") == 2
    assert layer_index("model.layers.11.mlp.up_proj.weight") == 11
    assert layer_index("model.embed_tokens.weight") is None


def test_shape_mismatch_is_a_kinship_error(zoo, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    other = LlamaForCausalLM(LlamaConfig(**{**_config().to_dict(), "intermediate_size": 40}))
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(KinshipError, match="shape"):
        kinship_matrix([zoo["expert0"], tmp_path / "other"], zoo["base"])
    # a smaller vocabulary is not truncatable: the base has rows the model lacks
    with pytest.raises(KinshipError, match="no common base"):
        kinship_matrix([zoo["expert0"]], zoo["expert2"])
    sd = load_file(zoo["expert0"] / "model.safetensors")
    del sd["model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(KinshipError, match="up_proj"):
        kinship_matrix([sd], zoo["base"])


def test_adapter_of_another_base_is_refused(zoo, tmp_path):
    import shutil

    folder = tmp_path / "foreign"
    shutil.copytree(zoo["lora_attn"], folder)
    meta = json.loads((folder / "adapter_config.json").read_text())
    meta["base_model_name_or_path"] = "mistralai/Mistral-7B-v0.1"
    (folder / "adapter_config.json").write_text(json.dumps(meta))
    with pytest.raises(KinshipError, match="Mistral-7B"):
        kinship_matrix([folder, zoo["expert0"]], zoo["base"], base_id="meta-llama/Llama-2-7b-hf")
    # a local-path base says nothing about the adapter's Hub id: compared by shapes only
    assert kinship_matrix([folder, zoo["expert0"]], zoo["base"]).matrix.shape == (2, 2)
    assert kinship_matrix(
        [AdapterSource(folder, check_base_id=False)],
        zoo["base"],
        base_id="meta-llama/Llama-2-7b-hf",
    ).names == ["foreign"]


def test_bad_options_are_clear_errors(zoo):
    with pytest.raises(KinshipError, match="metric"):
        kinship_matrix([zoo["expert0"]], zoo["base"], "manhattan")  # type: ignore[arg-type]
    with pytest.raises(KinshipError, match="No floating-point tensor"):
        kinship_matrix([zoo["expert0"]], zoo["base"], include="nothing_matches_this")
    with pytest.raises(KinshipError, match="at least one"):
        kinship_matrix([], zoo["base"])
    with pytest.raises(KinshipError, match="adapter"):
        kinship_matrix([zoo["expert0"]], zoo["lora_attn"])


def test_identical_model_has_undefined_correlation(zoo):
    result = kinship_matrix([zoo["base"], zoo["expert0"]], zoo["base"], "cosine")
    assert math.isnan(result.matrix[0, 1])
    assert result.to_dict()["matrix"][0][1] is None
    assert "n/a" in str(result)


def test_result_json_and_table(zoo):
    result = kinship_matrix([zoo["expert0"], zoo["lora_attn"]], zoo["base"])
    data = json.loads(result.to_json())
    assert data["names"] == ["expert0", "lora_attn"]
    assert data["metric"] == "pearson" and data["n_params"] == result.n_params
    assert data["matrix"][0][1] == pytest.approx(result.pair(0, 1))
    assert set(data["layers"]) == {"0", "1"} and "attention" in data["groups"]
    text = str(result)
    assert "expert0" in text and "lora_attn" in text and f"{result.pair(0, 1):+.4f}" in text


# --- CLI --------------------------------------------------------------------------------------


def test_cli_table_json_and_plot(zoo, tmp_path, capsys):
    from PIL import Image

    png = tmp_path / "kin.png"
    code = main(
        [
            "kinship",
            str(zoo["expert0"]),
            str(zoo["expert1"]),
            str(zoo["lora_emb"]),
            "--base",
            str(zoo["base"]),
            "--plot",
            str(png),
            "--per-layer",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "expert1" in out and "lora_emb" in out and "per layer" in out.lower()
    expected = kinship_matrix([zoo["expert0"], zoo["expert1"], zoo["lora_emb"]], zoo["base"])
    assert f"{expected.pair(0, 1):+.4f}" in out
    with Image.open(png) as image:
        image.verify()
    with Image.open(png) as image:
        assert image.format == "PNG"
        width, height = image.size
        assert 300 <= width <= 3000 and 300 <= height <= 3000

    code = main(
        [
            "kinship",
            str(zoo["expert0"]),
            str(zoo["lora_attn"]),
            "--base",
            str(zoo["base"]),
            "--json",
            "--metric",
            "euclidean",
            "--group",
            "attention",
        ]
    )
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    ref = kinship_matrix(
        [zoo["expert0"], zoo["lora_attn"]], zoo["base"], "euclidean", include="attention"
    )
    assert data["metric"] == "euclidean" and data["matrix"][0][1] == pytest.approx(ref.pair(0, 1))


def test_cli_errors_are_one_line(zoo, tmp_path, capsys):
    code = main(["kinship", str(zoo["expert0"]), "--base", str(zoo["expert2"])])
    err = capsys.readouterr().err
    assert code == 3 and "no common base" in err and "Traceback" not in err
    code = main(["kinship", str(zoo["expert0"]), "--base", str(tmp_path / "missing")])
    assert code == 2 and "does not exist" in capsys.readouterr().err


def test_chunked_accumulation_matches(zoo, monkeypatch):
    """Tensors split over many row chunks (as large models are) give the same matrix."""
    import hub_merge.kinship.accumulate as kin  # where the chunk size is read

    which = ["expert0", "lora_emb", "expert2", "lora_attn"]
    whole = kinship_matrix([zoo[n] for n in which], zoo["base"])
    monkeypatch.setattr(kin, "_CHUNK", 100)  # a few rows per chunk, ragged last chunk
    chunked = kinship_matrix([zoo[n] for n in which], zoo["base"])
    np.testing.assert_allclose(chunked.stats.gram, whole.stats.gram, rtol=1e-10)
    np.testing.assert_allclose(
        chunked.matrix, _reference([zoo[n] for n in which], zoo["base"])["pearson"], atol=1e-6
    )


@pytest.mark.parametrize("metric", ["pearson", "cosine", "euclidean"])
def test_tiny_zoo_experts_and_adapters(tiny_zoo, metric):
    """The shared zoo: trained full experts and LoRA adapters of one base, mixed in one matrix."""
    models = {f"expert/{t}": p for t, p in tiny_zoo.experts.items()}
    models.update({f"adapter/{t}": p for t, p in tiny_zoo.adapters.items()})
    result = kinship_matrix(models, tiny_zoo.base, metric, device="cpu")
    ref = _reference(list(models.values()), tiny_zoo.base)
    assert result.names == list(models)
    np.testing.assert_allclose(result.matrix, ref[metric], atol=1e-6, rtol=1e-6)
    np.testing.assert_allclose(result.matrix, result.matrix.T, atol=1e-12)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(zoo):
    which = [zoo[n] for n in ["expert0", "lora_emb", "expert2", "lora_head"]]
    on_cpu = kinship_matrix(which, zoo["base"], device="cpu")
    on_gpu = kinship_matrix(which, zoo["base"], device="auto")
    np.testing.assert_allclose(on_gpu.stats.gram, on_cpu.stats.gram, rtol=1e-9)
    np.testing.assert_allclose(on_gpu.matrix, on_cpu.matrix, atol=1e-9)


def test_adapter_with_changed_embedding_base_layer(zoo, tmp_path):
    """peft saves a resized/changed embedding beside its LoRA factors: both count, as in peft."""
    import shutil

    from safetensors.torch import save_file

    folder = tmp_path / "lora_emb_changed"
    shutil.copytree(zoo["lora_emb"], folder)
    weights = load_file(folder / "adapter_model.safetensors")
    (key,) = [k for k in weights if k.endswith("embed_tokens.base_layer.weight")]
    weights[key] = weights[key] + 0.05 * torch.randn_like(weights[key])
    save_file(weights, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    which = [zoo["expert0"], folder, zoo["lora_emb"]]
    result = kinship_matrix(which, zoo["base"], "cosine")
    np.testing.assert_allclose(result.matrix, _reference(which, zoo["base"])["cosine"], atol=1e-6)
