"""hub-merge moe for Qwen2/Qwen3 families: Qwen2-MoE and Qwen3-MoE outputs that load in
transformers, compute the expert's function exactly in the one-expert case, and hold
mergekit-moe's tensors (routers aside: the router initialisations differ by design)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hub_merge.cli import main
from hub_merge.errors import ConfigError, UnsupportedRepoError
from hub_merge.moe import ExpertSpec, MoeSettings, build_moe
from tests.fixtures.merge import load_folder

PROMPTS = (["abc", "abd", "bcd"], ["1+2=", "3+4=", "12"], ["xyz", "zzy"])


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = "abcdefghijklmnopqrstuvwxyz0123456789+=:"
    vocab = {c: i for i, c in enumerate(["<pad>", "<bos>", "<eos>", *chars])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>"
    )


def _family(root: Path, kind: str, n: int = 3) -> tuple[Path, list[Path]]:
    """A tiny base of ``kind`` (qwen2, qwen3, llama) and ``n`` experts = base + noise."""
    import transformers

    cls_name = {"qwen2": "Qwen2", "qwen3": "Qwen3", "llama": "Llama"}[kind]
    cfg = getattr(transformers, f"{cls_name}Config")(
        vocab_size=48,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    model_cls = getattr(transformers, f"{cls_name}ForCausalLM")
    tok = _tokenizer()
    torch.manual_seed(0)
    base = model_cls(cfg)
    state = {k: v.clone() for k, v in base.state_dict().items()}
    folders = []
    for i in range(n + 1):
        model = model_cls(cfg)
        model.load_state_dict(state)
        if i:
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.05 * torch.randn_like(p))
        folder = root / ("base" if i == 0 else f"expert{i - 1}")
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
        folders.append(folder)
    return folders[0], folders[1:]


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    root = tmp_path_factory.mktemp("qwen_families")
    return {kind: _family(root / kind, kind) for kind in ("qwen2", "qwen3", "llama")}


def _specs(experts):
    return [ExpertSpec(e, list(p)) for e, p in zip(experts, PROMPTS, strict=False)]


def test_a_qwen2_family_becomes_a_qwen2_moe_that_loads_and_generates(families, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2MoeForCausalLM

    base, experts = families["qwen2"]
    out = build_moe(base, _specs(experts), tmp_path / "moe", license="mit", device="cpu")
    model = AutoModelForCausalLM.from_pretrained(out.folder)
    assert isinstance(model, Qwen2MoeForCausalLM)
    assert model.config.num_experts == 3 and model.config.num_experts_per_tok == 2
    assert model.config.shared_expert_intermediate_size == 0  # no --shared-expert: empty
    tok = AutoTokenizer.from_pretrained(out.folder)
    ids = tok("abc", return_tensors="pt")
    generated = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] > ids["input_ids"].shape[1]
    moe, second = load_folder(out.folder), load_folder(experts[1])
    for proj in ("gate_proj", "up_proj", "down_proj"):
        assert torch.equal(
            moe[f"model.layers.1.mlp.experts.1.{proj}.weight"],
            second[f"model.layers.1.mlp.{proj}.weight"],
        )
    assert out.manifest["architecture"] == "Qwen2MoeForCausalLM"
    assert out.manifest["routing"]["positive prompts"]["mean"] > 0.5


@pytest.mark.parametrize("kind", ["qwen2", "qwen3"])
def test_one_expert_top1_is_exactly_that_expert(kind, families, tmp_path):
    """One expert, top-1, no shared expert: the MoE computes the dense expert's logits."""
    from transformers import AutoModelForCausalLM

    base, experts = families[kind]
    settings = MoeSettings(top_k=1, router="random")
    out = build_moe(base, _specs(experts[:1]), tmp_path / "moe", settings, license="mit")
    moe = AutoModelForCausalLM.from_pretrained(out.folder).eval()
    # the reference: the base (shared weights are the base's) with the expert's MLPs
    dense = AutoModelForCausalLM.from_pretrained(base).eval()
    mlps = {k: v for k, v in load_folder(experts[0]).items() if ".mlp." in k}
    assert len(mlps) == 6
    dense.load_state_dict(mlps, strict=False)
    assert (
        type(moe).__name__ == {"qwen2": "Qwen2MoeForCausalLM", "qwen3": "Qwen3MoeForCausalLM"}[kind]
    )
    ids = torch.tensor([[1, 5, 6, 7, 8, 9]])
    with torch.no_grad():
        torch.testing.assert_close(moe(ids).logits, dense(ids).logits, rtol=1e-5, atol=1e-5)


def test_shared_expert_base_and_a_llama_base_as_qwen2_moe(families, tmp_path):
    from transformers import AutoModelForCausalLM

    base, experts = families["llama"]
    settings = MoeSettings(router="random", output_arch="qwen2_moe", shared_expert="base")
    out = build_moe(base, _specs(experts[:2]), tmp_path / "moe", settings, license="mit")
    cfg = json.loads((out.folder / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen2MoeForCausalLM"]
    assert cfg["shared_expert_intermediate_size"] == 48
    moe, dense = load_folder(out.folder), load_folder(base)
    assert torch.equal(
        moe["model.layers.0.mlp.shared_expert.down_proj.weight"],
        dense["model.layers.0.mlp.down_proj.weight"],
    )
    # Qwen2-MoE has q/k/v biases a Llama lacks: zeros, so attention is the base's
    assert not moe["model.layers.1.self_attn.k_proj.bias"].any()
    AutoModelForCausalLM.from_pretrained(out.folder)(torch.tensor([[1, 4, 5]]))
    # auto still gives a Llama family its Mixtral
    mixtral = build_moe(
        base, _specs(experts[:2]), tmp_path / "mixtral", MoeSettings(router="random"), license="mit"
    )
    assert mixtral.manifest["architecture"] == "MixtralForCausalLM"


def test_refusals_name_what_is_supported(families, tmp_path):
    qwen3, experts = families["qwen3"]
    with pytest.raises(UnsupportedRepoError, match="mixtral is built from llama, mistral"):
        build_moe(qwen3, _specs(experts[:2]), tmp_path / "a", MoeSettings(output_arch="mixtral"))
    with pytest.raises(ConfigError, match="no shared expert"):
        build_moe(qwen3, _specs(experts[:2]), tmp_path / "b", MoeSettings(shared_expert="base"))
    code = main(["moe", "--base", str(qwen3), "--expert", str(experts[0]), "--prompts", "a",
                 "--output-arch", "bogus", "--out", str(tmp_path / "c")])  # fmt: skip
    assert code != 0
    assert not any((tmp_path / n).exists() for n in "abc")


def _mergekit_moe(config: dict, out: Path) -> None:
    path = out.with_suffix(".yml")
    path.write_text(json.dumps(config))
    script = (
        "import sys\nfrom mergekit.scripts.moe import main\n"
        "main.main([sys.argv[1], sys.argv[2], '--device', 'cpu'], standalone_mode=False)\n"
    )
    subprocess.run([sys.executable, "-c", script, str(path), str(out)], check=True)


@pytest.mark.slow  # two mergekit-moe processes (~10 s of imports each on 2 cores)
@pytest.mark.parametrize("kind", ["qwen2", "qwen3"])
def test_the_tensors_are_mergekit_moes_routers_aside(kind, families, tmp_path):
    base, experts = families[kind]
    config = {
        "base_model": str(base),
        "gate_mode": "random",
        "dtype": "float32",
        "experts": [{"source_model": str(e)} for e in experts[:2]],
    }
    shared = None
    if kind == "qwen2":  # mergekit-moe's Qwen2-MoE needs exactly one shared expert
        config["shared_experts"] = [{"source_model": str(base)}]
        shared = "base"
    _mergekit_moe(config, tmp_path / "mk")
    settings = MoeSettings(router="random", shared_expert=shared)
    out = build_moe(base, _specs(experts[:2]), tmp_path / "ours", settings, license="mit")
    ours, theirs = load_folder(out.folder), load_folder(tmp_path / "mk")
    if kind == "qwen3":  # mergekit fuses Qwen3-MoE's experts; transformers' own load does too
        for layer in range(2):
            pre = f"model.layers.{layer}.mlp.experts"
            for proj in ("gate_proj", "up_proj", "down_proj"):
                stacked = torch.stack([ours.pop(f"{pre}.{e}.{proj}.weight") for e in range(2)])
                ours[f"{pre}.{proj}"] = stacked
            ours[f"{pre}.gate_up_proj"] = torch.cat(
                [ours.pop(f"{pre}.gate_proj"), ours.pop(f"{pre}.up_proj")], dim=1
            )
    assert set(ours) == set(theirs)
    routers = [n for n in theirs if n.endswith((".mlp.gate.weight", "shared_expert_gate.weight"))]
    assert len(routers) == (4 if kind == "qwen2" else 2)
    for name in theirs:
        if name not in routers:
            assert torch.equal(ours[name], theirs[name]), name
        else:
            assert ours[name].shape == theirs[name].shape, name
    ours_cfg = json.loads((out.folder / "config.json").read_text())
    theirs_cfg = json.loads((tmp_path / "mk" / "config.json").read_text())
    for key in ("architectures", "num_experts", "num_local_experts", "num_experts_per_tok",
                "moe_intermediate_size", "norm_topk_prob", "decoder_sparse_step", "hidden_size",
                "num_hidden_layers", "shared_expert_intermediate_size"):  # fmt: skip
        assert ours_cfg.get(key) == theirs_cfg.get(key), key
