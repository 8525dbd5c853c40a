"""hub-merge moe / moa on the tiny zoo: loadable Mixtral, right routing, exact one-expert case,
refusals, card, push and pull back by repo id, MoA from the CLI."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from hub_merge.card_rules import parse_front_matter
from hub_merge.cli import main
from hub_merge.errors import (
    ConfigError,
    IncompatibleModelsError,
    TaskFileError,
    UnsupportedRepoError,
)
from hub_merge.moe import ExpertSpec, MoeSettings, PromptSet, build_moe, measure_routing

NAMES = ("add", "reverse", "sort", "uppercase")


@pytest.fixture(scope="module")
def full_moe(tiny_zoo, tmp_path_factory) -> Path:
    """The MoE of the four full experts, built through the CLI (top-2, hidden router)."""
    out = tmp_path_factory.mktemp("moe") / "moe"
    argv = ["moe", "--base", str(tiny_zoo.base), "--out", str(out), "--device", "cpu"]
    for n in NAMES:
        argv += ["--expert", str(tiny_zoo.experts[n]), "--prompts", str(tiny_zoo.train[n])]
        argv += ["--name", n]
    for n in NAMES:
        argv += ["--test", str(tiny_zoo.tasks[n])]
    assert main(argv) == 0
    return out


def test_moe_loads_in_transformers_and_generates(full_moe, tiny_zoo):
    from transformers import AutoModelForCausalLM, AutoTokenizer, MixtralForCausalLM

    model = AutoModelForCausalLM.from_pretrained(full_moe)
    assert isinstance(model, MixtralForCausalLM)
    assert model.config.num_local_experts == 4 and model.config.num_experts_per_tok == 2
    tok = AutoTokenizer.from_pretrained(full_moe)
    ids = tok("sort: dcba=", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > ids["input_ids"].shape[1]
    # each expert's MLP is that expert's, bit for bit
    from safetensors import safe_open

    with (
        safe_open(str(full_moe / "model.safetensors"), "pt") as moe,
        safe_open(str(tiny_zoo.experts["sort"] / "model.safetensors"), "pt") as sort,
    ):
        got = moe.get_tensor("model.layers.1.block_sparse_moe.experts.2.w2.weight")
        assert torch.equal(got, sort.get_tensor("model.layers.1.mlp.down_proj.weight"))


def test_router_picks_each_experts_own_positive_prompts(full_moe, tiny_zoo):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(full_moe).eval()
    tok = AutoTokenizer.from_pretrained(full_moe)
    sets = [PromptSet.from_value(tiny_zoo.train[n], limit=64) for n in NAMES]
    routing = measure_routing(model, tok, sets)
    for s in range(len(NAMES)):
        for layer in range(routing.fractions.shape[1]):
            shares = routing.fractions[s, layer]
            assert shares.argmax() == s, (NAMES[s], layer, shares)
            assert shares[s] > 0.6
    # the same measurement is what the card and hub_merge.json record
    manifest = json.loads((full_moe / "hub_merge.json").read_text())
    assert manifest["routing"]["positive prompts"]["mean"] == pytest.approx(
        float(routing.accuracy().mean()), abs=1e-3
    )
    assert manifest["routing"]["test rows"]["mean"] > 0.6  # held-out task files, not the prompts


def test_card_records_router_prompts_and_parameter_counts(full_moe, tiny_zoo):
    meta = parse_front_matter((full_moe / "README.md").read_text())
    assert meta["library_name"] == "transformers" and meta["license"] == "apache-2.0"
    block = meta["hub_merge"]
    assert block["router_mode"] == "hidden" and block["top_k"] == 2
    digest = hashlib.sha256(Path(tiny_zoo.train["sort"]).read_bytes()).hexdigest()
    assert block["prompts"]["sort"]["sha256"] == digest
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(full_moe)
    assert block["parameters"]["total"] == sum(p.numel() for p in model.parameters())
    experts = model.model.layers[0].mlp.experts
    one = sum(p.numel() for p in experts.parameters()) // 4 * model.config.num_hidden_layers
    assert block["parameters"]["active"] == block["parameters"]["total"] - 2 * one
    assert (full_moe / "routing.png").stat().st_size > 1000
    assert "routing.png" in (full_moe / "README.md").read_text()


def test_one_expert_top1_reproduces_that_experts_logits(tiny_zoo, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = tiny_zoo.adapters["reverse"]
    out = tmp_path / "one"
    build_moe(
        tiny_zoo.base,
        [ExpertSpec(adapter, ["reverse: abc=", "reverse: hello="], name="reverse")],
        out,
        MoeSettings(top_k=1, shared="average"),  # the mean of one delta is that delta
        device="cpu",
    )
    moe = AutoModelForCausalLM.from_pretrained(out).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_zoo.base)
    expert = PeftModel.from_pretrained(base, adapter).merge_and_unload().eval()
    ids = torch.tensor([[257, *b"reverse: qwerty=", 258]])
    with torch.no_grad():
        got, want = moe(input_ids=ids).logits, expert(input_ids=ids).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def _copy_with_config(src: Path, dst: Path, **changes) -> Path:
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(changes)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_refusals_are_typed_and_leave_no_output(tiny_zoo, tmp_path):
    out = tmp_path / "never"
    add, sort = tiny_zoo.experts["add"], tiny_zoo.experts["sort"]
    prompts = ["a"]
    deeper = _copy_with_config(add, tmp_path / "deeper", num_hidden_layers=3)
    with pytest.raises(IncompatibleModelsError, match="num_hidden_layers"):
        build_moe(tiny_zoo.base, [ExpertSpec(deeper, prompts), ExpertSpec(sort, prompts)], out)
    wider = _copy_with_config(add, tmp_path / "vocab", vocab_size=300)
    with pytest.raises(IncompatibleModelsError, match="vocab_size"):
        build_moe(tiny_zoo.base, [ExpertSpec(wider, prompts), ExpertSpec(sort, prompts)], out)
    gpt2 = _copy_with_config(tiny_zoo.base, tmp_path / "gpt2", model_type="gpt2")
    with pytest.raises(UnsupportedRepoError, match="Llama or Mistral"):
        build_moe(gpt2, [ExpertSpec(add, prompts), ExpertSpec(sort, prompts)], out)
    with pytest.raises(ConfigError, match="top-k"):
        build_moe(tiny_zoo.base, [ExpertSpec(add, prompts)], out, MoeSettings(top_k=2))
    text = tmp_path / "prompts.txt"
    text.write_text("add: 1+1=\n")
    with pytest.raises(TaskFileError, match="not a .jsonl task file"):
        build_moe(tiny_zoo.base, [ExpertSpec(add, text), ExpertSpec(sort, prompts)], out)
    with pytest.raises(ConfigError, match="router mode"):
        build_moe(tiny_zoo.base, [ExpertSpec(add, prompts)], out, MoeSettings(router="magic"))
    assert main(["moe", "--base", str(tiny_zoo.base), "--expert", str(add), "--out", str(out),
                 "--prompts", "a", "--prompts", "b"]) == ConfigError.exit_code  # fmt: skip
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".never")]


def test_moe_pushed_with_card_and_pulled_back_by_repo_id(tiny_zoo, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hub_merge.hub import pull
    from hub_merge.localhub import LocalHub
    from hub_merge.zoo import upload_zoo

    zoo_token, token = "hf_zoo_local_write", "hf_alice_write"
    tokens = {zoo_token: ("hub-merge-zoo", "write"), token: ("alice", "write")}
    with LocalHub(tmp_path / "hub", tokens=tokens) as hub:
        up = upload_zoo(
            tiny_zoo,
            endpoint=hub.endpoint,
            token=zoo_token,
            include=["base", "adapter/add", "adapter/sort"],
        )
        hubopts = ["--endpoint", hub.endpoint, "--token", token]
        out = tmp_path / "moe"
        argv = ["moe", "--base", up.base, "--out", str(out), "--top-k", "1", *hubopts]
        for n in ("add", "sort"):
            argv += ["--expert", up.repo_ids[f"adapter/{n}"], "--prompts", str(tiny_zoo.train[n])]
        assert main(argv) == 0
        assert main(["push", str(out), "--repo", "alice/tiny-moe", *hubopts]) == 0
        pulled = pull("alice/tiny-moe", endpoint=hub.endpoint, token=token,
                      cache_dir=tmp_path / "cache")  # fmt: skip
        meta = parse_front_matter((pulled.path / "README.md").read_text())
        assert meta["base_model"] == [up.repo_ids["adapter/add"], up.repo_ids["adapter/sort"]]
        assert meta["base_model_relation"] == "merge"
        assert meta["hub_merge"]["top_k"] == 1
        assert "alice/tiny-moe" in (pulled.path / "README.md").read_text()  # usage snippet
        assert "hf_" not in (pulled.path / "README.md").read_text()
        model = AutoModelForCausalLM.from_pretrained(pulled.path)
        tok = AutoTokenizer.from_pretrained(pulled.path)
        ids = tok("add: 2+3=", return_tensors="pt")
        gen = model.generate(
            **ids, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id
        )
        assert gen.shape[1] > ids["input_ids"].shape[1]


def test_moa_runs_from_the_cli_and_reports_its_cost(tiny_zoo, tmp_path, capsys):
    report = tmp_path / "moa.json"
    argv = ["moa", "--base", str(tiny_zoo.base), "--layers", "2", "--limit", "3"]
    argv += ["--expert", str(tiny_zoo.adapters["add"]), "--expert", str(tiny_zoo.experts["sort"])]
    argv += ["--tasks", str(tiny_zoo.tasks["add"]), "--tasks", str(tiny_zoo.tasks["sort"])]
    argv += ["--aggregator", "sort", "--out", str(report), "--device", "cpu"]
    argv += ["--max-new-tokens", "6"]  # the reference's 2048 is slow on CPU
    assert main(argv) == 0
    assert "model calls" in capsys.readouterr().out
    data = json.loads(report.read_text())
    assert data["queries"] == 6 and set(data["exact_match"]) == {"add", "sort"}
    assert set(data["answer_loss"]) == {"add", "sort"} and data["mean_answer_loss"] > 0
    assert data["settings"]["temperature"] == 0.7 and data["settings"]["budget"] == 6
    assert data["calls_per_query"] == 2 * 2 + 1  # proposers x layers + the aggregator
    assert 0 < data["generated_tokens_per_query"] <= 5 * data["settings"]["budget"]
    assert len(data["samples"][0]["proposals"]) == 2


@pytest.mark.parametrize(
    "mode, gate_mode", [("mergekit", "hidden"), ("mergekit-mean", "hidden_avg")]
)
def test_mergekit_router_is_mergekit_moes_own_gate(tiny_zoo, tmp_path, mode, gate_mode):
    # build the same MoE with mergekit-moe itself and compare the router weights it writes
    import subprocess
    import sys

    import yaml
    from safetensors.torch import load_file

    experts = {
        "add": (["12+7=", "3+4=", "100+1="], ["sort: cba"]),
        "sort": (["sort: dcba", "sort: zyx with a longer prompt"], None),
        "reverse": (["reverse: abc"], ["12+7=", "reverse"]),
    }
    config = {
        "base_model": str(tiny_zoo.base),
        "gate_mode": gate_mode,
        "dtype": "float32",
        "experts_per_token": 2,
        "experts": [
            {
                "source_model": str(tiny_zoo.experts[n]),
                "positive_prompts": pos,
                **({"negative_prompts": neg} if neg else {}),
            }
            for n, (pos, neg) in experts.items()
        ],
    }
    (tmp_path / "moe.yml").write_text(yaml.safe_dump(config))
    cli = Path(sys.executable).with_name("mergekit-moe")
    subprocess.run(
        [str(cli), str(tmp_path / "moe.yml"), str(tmp_path / "mk"), "--device", "cpu"],
        check=True,
        capture_output=True,
    )
    theirs = {}
    for f in (tmp_path / "mk").glob("*.safetensors"):
        theirs.update({k: v for k, v in load_file(f).items() if k.endswith("gate.weight")})
    specs = [
        ExpertSpec(tiny_zoo.experts[n], pos, n, negative_prompts=neg)
        for n, (pos, neg) in experts.items()
    ]
    out = build_moe(
        tiny_zoo.base, specs, tmp_path / "ours", MoeSettings(router=mode), device="cpu"
    ).folder
    ours = {}
    for f in out.glob("*.safetensors"):
        ours.update({k: v for k, v in load_file(f).items() if k.endswith("gate.weight")})
    layers = len(ours)
    assert layers == len(theirs) == 2
    for i in range(layers):
        mine = ours[f"model.layers.{i}.block_sparse_moe.gate.weight"]
        mk = next(v for k, v in theirs.items() if k.startswith(f"model.layers.{i}."))
        assert mine.shape == mk.shape == (3, 64)
        torch.testing.assert_close(mine, mk, rtol=0, atol=0)
    card = (out / "README.md").read_text()
    assert f"Router: `{mode}`" in card and "mergekit-moe's" in card
    with pytest.raises(ConfigError, match="Negative prompts are mergekit-moe's"):
        build_moe(
            tiny_zoo.base,
            specs,
            tmp_path / "hidden",
            MoeSettings(router="hidden"),
            device="cpu",
        )


def test_negative_prompts_from_the_cli_need_one_per_expert(tiny_zoo, tmp_path, capsys):
    argv = ["moe", "--base", str(tiny_zoo.base), "--out", str(tmp_path / "m"), "--device", "cpu"]
    argv += ["--router", "mergekit", "--negative-prompts", "x"]
    for n in ("add", "sort"):
        argv += ["--expert", str(tiny_zoo.experts[n]), "--prompts", "a;;b"]
    assert main(argv) == ConfigError.exit_code
    assert "one per --expert (2), '' for none" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
