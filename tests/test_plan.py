"""`hub-merge plan` finds every incompatibility from configs and headers, without the weights.

Models are built in code, pushed to the local Hub with the real client, and planned through it;
the local Hub counts the body bytes it served per file, so the tests can assert that no weight
file was sent whole (safetensors headers are read with HTTP range requests).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hub_merge.cli import main
from hub_merge.errors import IncompatibleModelsError
from hub_merge.merge import MergeRecipe, ModelEntry
from hub_merge.plan import plan_models, plan_recipe
from tests.fixtures.hubio import WORDS, card, tiny_llama, tiny_lora

HIDDEN = 64  # weight files of ~0.4 MB: bigger than the 100 kB a header read asks for


def _deeper(folder: Path) -> Path:
    """The base architecture with 3 layers instead of 2."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.fixtures.hubio import save_tokenizer

    torch.manual_seed(4)
    cfg = LlamaConfig(
        vocab_size=len(WORDS),
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(cfg).save_pretrained(str(folder))
    save_tokenizer(folder)
    return folder


@pytest.fixture(scope="module")
def plan_models_dir(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("plan_models")
    swapped = list(WORDS)
    swapped[5], swapped[6] = swapped[6], swapped[5]
    base = tiny_llama(root / "base", seed=0, hidden=HIDDEN, card=card())
    wide = tiny_llama(root / "wide", seed=3, hidden=2 * HIDDEN, card=card())
    pickled = root / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((base / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle" * 100)
    return {
        "base": base,
        "expert": tiny_llama(root / "expert", seed=1, hidden=HIDDEN, card=card(license="mit")),
        "same": tiny_llama(root / "same", seed=5, hidden=HIDDEN, card=card()),
        "wide": wide,
        "vocab": tiny_llama(root / "vocab", seed=2, hidden=HIDDEN, words=swapped, card=card()),
        "deeper": _deeper(root / "deeper"),
        "pickled": pickled,
        # a LoRA of the wide model that names this base: its deltas do not fit the base
        "adapter": tiny_lora(root / "adapter", wide, base_name="alice/base"),
    }


@pytest.fixture
def hub_repos(local_hub, plan_models_dir) -> dict[str, str]:
    from hub_merge.hub import get_api

    api = get_api(local_hub.endpoint, local_hub.token)
    repos = {}
    for name, folder in plan_models_dir.items():
        repo_id = f"{local_hub.user}/{name}"
        api.create_repo(repo_id)
        api.upload_folder(repo_id=repo_id, folder_path=folder)
        repos[name] = repo_id
    local_hub.server.hub.served.clear()  # count only what the plan reads
    return repos


def _weight_sizes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in folder.glob("*.safetensors")}


def _assert_no_weights_sent(local_hub, plan_models_dir, repos) -> int:
    """Every weight file was read by its header only; returns the weight bytes served.

    huggingface_hub's header read asks for the first 100 kB, so a file smaller than that (the
    17 kB adapter) is sent whole; every model weight file here is bigger and must not be.
    """
    served = local_hub.server.hub.served
    total = 0
    for name, repo_id in repos.items():
        for fname, size in _weight_sizes(plan_models_dir[name]).items():
            got = served.get(f"{repo_id}/{fname}", 0)
            assert got <= min(size, 100_001), (repo_id, fname, got, size)
            if fname == "model.safetensors":
                assert got < size / 3, (repo_id, fname, got, size)
            total += got
        assert f"{repo_id}/pytorch_model.bin" not in served
    return total


def test_plan_reports_every_incompatibility_without_downloading_weights(
    local_hub, plan_models_dir, hub_repos
):
    r = hub_repos
    plan = plan_models(
        r["base"],
        [r["expert"], r["wide"], r["vocab"], r["deeper"], r["pickled"], r["adapter"]],
        endpoint=local_hub.endpoint,
        token=local_hub.read_token,
    )
    assert not plan.ok
    by_model: dict[str, list[str]] = {}
    for issue in plan.issues:
        by_model.setdefault(issue.model, []).append(f"{issue.what}: {issue.detail}")
    text = lambda repo: " | ".join(by_model.get(repo, []))  # noqa: E731
    assert r["expert"] not in by_model  # same architecture: fine (its license is a note)
    assert "tensor model.embed_tokens.weight: shape (32, 128) vs (32, 64)" in text(r["wide"])
    assert "vocabulary" in text(r["vocab"]) and "tensor" not in text(r["vocab"])
    assert "layer count: 3 layers vs 2" in text(r["deeper"])
    assert "extra tensors" in text(r["deeper"]) and "model.layers.2." in text(r["deeper"])
    assert "pickle" in text(r["pickled"])
    assert "q_proj.weight: delta (128, 128) vs base (64, 64)" in text(r["adapter"])
    licenses = [i for i in plan.issues if i.what == "conflicting licenses"]
    assert len(licenses) == 1 and not licenses[0].blocking and "mit" in licenses[0].detail
    # Estimates: every listed weight byte would be downloaded (nothing is cached yet).
    assert plan.estimates["download_bytes"] >= sum(
        sum(_weight_sizes(plan_models_dir[n]).values()) for n in ("base", "expert", "wide")
    )
    assert plan.estimates["peak_ram_bytes"] > 0 and plan.estimates["seconds"] > 0
    _assert_no_weights_sent(local_hub, plan_models_dir, hub_repos)
    with pytest.raises(IncompatibleModelsError, match="before any weight was downloaded"):
        plan.raise_for_issues()


def test_plan_checks_the_method_contract_and_passes_a_good_recipe(local_hub, hub_repos):
    r = hub_repos
    kw = {"endpoint": local_hub.endpoint, "token": local_hub.read_token}
    good = MergeRecipe(
        method="ties",
        base=r["base"],
        models=[ModelEntry(model=r["same"], parameters={"weight": 0.5, "density": 0.5})] * 2,
    )
    plan = plan_recipe(good, **kw)
    assert plan.ok and plan.issues == []
    assert plan.estimates["output_bytes"] == pytest.approx(
        sum(4 * n for n in (32 * 64 * 2 + 64 + 2 * (4 * 64 * 64 + 3 * 64 * 128 + 2 * 64),))
    )
    slerp3 = MergeRecipe(
        method="slerp",
        base=r["base"],
        models=[ModelEntry(model=r["same"])] * 2,
        parameters={"t": 0.5},
    )
    issues = plan_recipe(slerp3, **kw).issues
    assert [i.what for i in issues] == ["method input contract"]
    # A nested recipe is planned through all its leaves and steps.
    inner = MergeRecipe(
        method="linear",
        models=[ModelEntry(model=r["same"]), ModelEntry(model=r["deeper"])],
        parameters={"weight": 0.5},
    )
    nested = good.model_copy(
        update={"models": [good.models[0], ModelEntry(model=inner, parameters={"weight": 0.5})]}
    )
    assert any(
        i.model == r["deeper"] and i.what == "layer count" for i in plan_recipe(nested, **kw).issues
    )


def test_cli_plan_and_merge_fail_fast_with_no_weight_sent(
    local_hub, plan_models_dir, hub_repos, tmp_path, capsys
):
    r = hub_repos
    hub_args = ["--endpoint", local_hub.endpoint, "--token", local_hub.read_token]
    code = main(["plan", "--base", r["base"], "--experts", r["wide"], "--json", *hub_args])
    out = json.loads(capsys.readouterr().out)
    assert code == IncompatibleModelsError.exit_code and out["ok"] is False
    assert any(i["model"] == r["wide"] for i in out["issues"])
    _assert_no_weights_sent(local_hub, plan_models_dir, hub_repos)
    local_hub.server.hub.served.clear()
    recipe = MergeRecipe(
        method="task_arithmetic",
        base=r["base"],
        models=[
            ModelEntry(model=r["same"], parameters={"weight": 0.5}),
            ModelEntry(model=r["vocab"], parameters={"weight": 0.5}),
        ],
    )
    path = tmp_path / "r.yaml"
    path.write_text(recipe.to_yaml())
    code = main(["merge", str(path), "--out", str(tmp_path / "out"), *hub_args])
    err = capsys.readouterr().err
    assert code == IncompatibleModelsError.exit_code and "vocabulary" in err
    assert not (tmp_path / "out").exists()
    _assert_no_weights_sent(local_hub, plan_models_dir, hub_repos)
    # A compatible recipe from Hub refs is planned, pulled and merged.
    ok = recipe.model_copy(
        update={"models": [ModelEntry(model=r["same"], parameters={"weight": 0.5})] * 2}
    )
    path.write_text(ok.to_yaml())
    assert main(["merge", str(path), "--out", str(tmp_path / "out"), "--json", *hub_args]) == 0
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_search_fails_fast_before_any_weight(local_hub, plan_models_dir, hub_repos, tmp_path):
    from hub_merge.search import SearchConfig, greedy_search

    tasks = tmp_path / "t.jsonl"
    tasks.write_text("".join(f'{{"prompt": "w{i} w2", "answer": "w3"}}\n' for i in range(10)))
    r = hub_repos
    config = SearchConfig(
        base=r["base"],
        experts=[r["same"], r["deeper"]],
        tasks=[str(tasks)],
        out=str(tmp_path / "run"),
        endpoint=local_hub.endpoint,
        token=local_hub.read_token,
        device="cpu",
    )
    with pytest.raises(IncompatibleModelsError, match="layer count"):
        greedy_search(config)
    _assert_no_weights_sent(local_hub, plan_models_dir, hub_repos)
    assert not (tmp_path / "run").exists()
