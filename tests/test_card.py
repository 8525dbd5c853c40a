"""Model cards of merged models: Hub metadata, lineage, mermaid tree, license rules, no tokens."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard

from hub_merge import card_rules
from hub_merge.card import (
    build_card,
    mermaid_tree,
    resolve_license,
    step_recipe,
    template_path,
    validate_card,
    write_card,
)
from hub_merge.cli import main
from hub_merge.errors import CardValidationError, ConfigError, LicenseConflictError
from hub_merge.lineage import FamilyTree, GenerationRecord, LineageNode

ROOT = Path(__file__).resolve().parents[1]
SLERP_T = {
    "t": [
        {"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
        {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]},
        {"value": 0.5},
    ]
}


def make_tree(adapter_license: str | None = "apache-2.0") -> FamilyTree:
    """Three generations: a Hub expert, a Hub LoRA adapter, a local folder; slerp then ties."""
    tree = FamilyTree(base="base", tasks=["add", "reverse", "sort"])
    tree.add(
        LineageNode(
            id="base",
            kind="base",
            name="base",
            repo_id="zoo/tiny-base",
            revision="b" * 40,
            license="apache-2.0",
        )
    )
    tree.add(
        LineageNode(
            id="add",
            kind="expert",
            name="add",
            repo_id="zoo/tiny-add",
            revision="a" * 40,
            license="apache-2.0",
            fitness=-4.1,
            scores={"add": 1.6, "reverse": 3.3, "sort": 7.4},
        )
    )
    tree.add(
        LineageNode(
            id="lora-reverse",
            kind="expert",
            name="lora-reverse",
            repo_id="zoo/tiny-lora-reverse",
            revision="c" * 40,
            is_adapter=True,
            license=adapter_license,
            fitness=-4.4,
            scores={"add": 7.0, "reverse": 2.6, "sort": 3.6},
        )
    )
    tree.add(
        LineageNode(
            id="sort",
            kind="expert",
            name="sort",
            path="/data/models/sort",
            license="apache-2.0",
            fitness=-3.9,
            scores={"add": 7.1, "reverse": 3.0, "sort": 1.6},
        )
    )

    def merge(node_id, parents, gen, method, params, fitness, scores):
        params = dict(params)
        as_base = params.pop("base_model", None)  # the parent used as mergekit's base
        others = [p for p in parents if p != as_base]
        recipe = {
            "method": method,
            "base": as_base or "base",
            "models": [{"model": p} for p in others],
            "parameters": params,
        }
        tree.add(
            LineageNode(
                id=node_id,
                kind="merge",
                name=node_id,
                parents=parents,
                generation=gen,
                method=method,
                parameters=params,
                recipe=recipe,
                fitness=fitness,
                scores=scores,
                merge_gain=0.5,
                parent_kinship=0.1,
            )
        )

    merge(
        "g1-1",
        ["sort", "add"],
        1,
        "slerp",
        {**SLERP_T, "base_model": "sort"},
        -3.0,
        {"add": 2.0, "reverse": 3.1, "sort": 2.0},
    )
    merge(
        "g1-2",
        ["sort", "lora-reverse"],
        1,
        "slerp",
        {**SLERP_T, "base_model": "sort"},
        -3.2,
        {"add": 6.0, "reverse": 2.7, "sort": 2.2},
    )
    merge(
        "g1-3",
        ["add", "lora-reverse"],
        1,
        "slerp",
        {**SLERP_T, "base_model": "add"},
        -3.4,
        {"add": 2.2, "reverse": 2.8, "sort": 4.0},
    )
    merge(
        "g2-1",
        ["g1-1", "g1-2"],
        2,
        "ties",
        {"weight": 1.0, "density": 0.5},
        -2.5,
        {"add": 2.1, "reverse": 2.7, "sort": 1.9},
    )
    tree.winner = "g2-1"
    tree.kinship_ids = ["add", "lora-reverse", "sort"]
    tree.kinship_matrix = [[1.0, 0.12, 0.05], [0.12, 1.0, float("nan")], [0.05, float("nan"), 1.0]]
    tree.generations = [
        GenerationRecord(0, -3.9, "sort", ["sort", "add", "lora-reverse"], None, 3, [], "experts"),
        GenerationRecord(
            1,
            -3.0,
            "g1-1",
            ["g1-1", "g1-2", "g1-3"],
            0.4,
            3,
            ["g1-1", "g1-2", "g1-3"],
            "all pairs of experts",
        ),
        GenerationRecord(2, -2.5, "g2-1", ["g2-1", "g1-1", "g1-2"], 0.8, 1, ["g2-1"], ""),
    ]
    tree.settings = {
        "k": 3,
        "generations": 2,
        "method": "slerp",
        "parameters": SLERP_T,
        "kinship_guided": True,
        "kinship_metric": "pearson",
        "patience": 2,
        "metric": "answer_loss",
        "limit": 8,
        "kinship_stop": None,
        "stop_reason": "max generations reached",
    }
    tree.validate()
    return tree


def front_matter(card: ModelCard | str) -> dict:
    return card_rules.parse_front_matter(str(card))


def mermaid_block(text: str) -> str:
    match = re.search(r"```mermaid\n(.*?)```", text, re.S)
    assert match, "no mermaid block in the card"
    return match.group(1)


def test_card_parses_back_with_every_field(tmp_path):
    tree = make_tree()
    path = tmp_path / "README.md"
    build_card(tree, repo_id="me/merged").save(path)
    card = ModelCard.load(path)
    data = card.data

    # the Hub's model tree: the merged Hub repos, the LoRA adapter itself included, in order;
    # the base they share is not a parent (it is in the hub_merge block)
    assert data.base_model == ["zoo/tiny-add", "zoo/tiny-lora-reverse"]
    assert data.base_model_relation == "merge"
    assert data.library_name == "transformers"
    assert data.license == "apache-2.0"
    assert {"merge", "hub-merge", "slerp", "ties"} <= set(data.tags)
    # model-index: one result per task with the winner's raw scores
    results = {r.task_name: r for r in data.eval_results}
    assert set(results) == set(tree.tasks)
    for task, result in results.items():
        assert result.metric_type == "answer_loss"
        assert result.metric_value == pytest.approx(tree.nodes["g2-1"].scores[task])
        # a hand-made tree has no held-out rows: the card says these are dev scores
        assert result.dataset_name == f"{task} (dev rows)" and result.dataset_split == "dev"
    # hub_merge block: every node with its source, method, parameters, generation, fitness
    block = data.hub_merge
    lineage = {entry["id"]: entry for entry in block["lineage"]}
    assert list(lineage) == list(tree.nodes)
    assert lineage["add"]["source"] == "zoo/tiny-add@" + "a" * 40
    assert lineage["lora-reverse"]["adapter"] is True
    assert lineage["sort"]["path"] == "/data/models/sort"
    for node in tree.nodes.values():
        assert lineage[node.id]["generation"] == node.generation
        assert lineage[node.id]["fitness"] == node.fitness
        if node.kind == "merge":
            assert lineage[node.id]["method"] == node.method
            assert lineage[node.id]["parameters"] == node.parameters
            assert lineage[node.id]["parents"] == node.parents
    assert block["adapters"] == ["zoo/tiny-lora-reverse"]
    assert block["base"] == {"id": "zoo/tiny-base", "revision": "b" * 40}
    assert block["kinship"]["ids"] == tree.kinship_ids
    assert block["kinship"]["matrix"][0] == [1.0, 0.12, 0.05]
    assert block["kinship"]["matrix"][1][2] is None  # NaN is written as null, not .nan

    body = card.text
    assert "# merged" in body
    assert 'AutoModelForCausalLM.from_pretrained("me/merged")' in body
    assert "| `lora-reverse` | 0.12 | 1 | – |" in body  # kinship table
    assert "| 2 | `g2-1` | -2.5 |" in body  # fitness by generation
    assert "hub-merge search --base zoo/tiny-base@" in body
    assert "/data/models/sort" in body and "--limit 8" in body
    assert "--kinship-stop none " in body  # the run had no kinship stop (the CLI reads none)


def test_card_passes_the_hubs_metadata_rules():
    card = build_card(make_tree())
    check = card_rules.check_readme(str(card))
    assert check.errors == []
    validate_card(card)  # does not raise


def test_validate_card_rejects_bad_metadata_and_tokens():
    text = str(build_card(make_tree()))
    with pytest.raises(CardValidationError, match="license"):
        validate_card(text.replace("license: apache-2.0", "license: not-a-license", 1))
    with pytest.raises(CardValidationError, match="lineage"):
        meta = front_matter(text)
        del meta["hub_merge"]
        validate_card("---\n" + yaml.safe_dump(meta) + "---\nbody\n")
    with pytest.raises(CardValidationError, match="token"):
        validate_card(text + "\nhf_abcdefghijklmnopqrstuvwxyz0123\n")


def test_mermaid_tree_has_every_node_and_edge_and_highlights_the_winner():
    tree = make_tree()
    block = mermaid_block(build_card(tree).text)
    assert block.startswith("graph TD")
    declared = dict(re.findall(r'^\s+(\w+)\["([^"]*)"\]$', block, re.M))
    assert len(declared) == len(tree.nodes)
    ids = {}
    for node_id in tree.nodes:
        (mid,) = [m for m, label in declared.items() if label.split("<br/>")[0] == node_id]
        ids[node_id] = mid
    edges = set(re.findall(r"^\s+(\w+) --> (\w+)$", block, re.M))
    expected = {(ids[p], ids[n.id]) for n in tree.nodes.values() for p in n.parents}
    assert edges == expected
    assert f"class {ids['g2-1']} winner" in block


def test_mermaid_ids_are_sanitized_and_unique():
    tree = FamilyTree()
    tree.add(LineageNode(id="end", kind="expert", name="end", path="/m/end"))
    tree.add(LineageNode(id="a.b c", kind="expert", name="x", path='/m/we"ird'))
    tree.add(LineageNode(id="a-b_c", kind="expert", name="y", path="/m/y"))
    tree.add(
        LineageNode(id="m[1]", kind="merge", name="m", parents=["end", "a.b c"], method="linear")
    )
    block = mermaid_tree(tree, highlight="m[1]")
    declared = re.findall(r'^\s+(\S+)\["([^"]*)"\]$', block, re.M)
    assert len(declared) == 4
    names = [d[0] for d in declared]
    assert all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", n) for n in names)
    assert len(set(names)) == 4 and "end" not in names


def test_conflicting_licenses_raise_naming_parents_and_explicit_resolves():
    tree = make_tree(adapter_license="mit")
    with pytest.raises(LicenseConflictError) as err:
        build_card(tree)
    message = str(err.value)
    assert "lora-reverse" in message and "mit" in message and "apache-2.0" in message
    assert "--license" in message

    card = build_card(tree, license="apache-2.0")
    assert front_matter(card)["license"] == "apache-2.0"
    validate_card(card)
    # a license the Hub has no id for is written as `other` + license_name
    custom = front_matter(build_card(tree, license="my-custom-license"))
    assert (custom["license"], custom["license_name"]) == ("other", "my-custom-license")


def test_unknown_parent_license_requires_an_explicit_one():
    tree = make_tree(adapter_license=None)
    with pytest.raises(LicenseConflictError, match="unknown"):
        resolve_license(tree, "g2-1")
    assert resolve_license(tree, "g2-1", "mit").license == "mit"


def test_license_only_counts_the_ancestors():
    tree = make_tree(adapter_license="mit")
    # g1-1 descends from add and sort only, so the adapter's license does not bind it
    assert resolve_license(tree, "g1-1").license == "apache-2.0"
    meta = front_matter(build_card(tree, node_id="g1-1"))
    assert meta["base_model"] == ["zoo/tiny-add"]
    assert meta["tags"] == ["merge", "hub-merge", "slerp"]


def test_original_node_is_refused():
    with pytest.raises(ConfigError, match="original"):
        build_card(make_tree(), node_id="add")
    with pytest.raises(ConfigError, match="No node"):
        build_card(make_tree(), node_id="nope")


def test_mergekit_yaml_for_each_step_on_the_winners_path():
    tree = make_tree()
    text = build_card(tree).text
    steps = re.findall(r"### Step `([^`]+)`.*?```yaml\n(.*?)```", text, re.S)
    assert [s for s, _ in steps] == ["g1-1", "g1-2", "g2-1"]  # g1-3 is not an ancestor
    configs = {s: yaml.safe_load(y) for s, y in steps}
    assert configs["g1-1"]["merge_method"] == "slerp"
    assert configs["g1-1"]["base_model"] == "/data/models/sort"
    assert configs["g1-1"]["models"] == [{"model": "zoo/tiny-add@" + "a" * 40}]
    assert configs["g1-1"]["parameters"]["t"][0] == {
        "filter": "self_attn",
        "value": SLERP_T["t"][0]["value"],
    }
    # a LoRA input is spelled mergekit's way: base+adapter, each pinned to its commit
    assert configs["g1-2"]["models"] == [
        {"model": f"zoo/tiny-base@{'b' * 40}+zoo/tiny-lora-reverse@{'c' * 40}"}
    ]
    # a merged parent is the output folder of its step; the common base is the task-vector base
    assert configs["g2-1"]["base_model"] == "zoo/tiny-base@" + "b" * 40
    assert configs["g2-1"]["models"] == [{"model": "./g1-1"}, {"model": "./g1-2"}]
    assert configs["g2-1"]["parameters"] == {"weight": 1.0, "density": 0.5}


def test_each_steps_mergekit_yaml_names_the_dtype_the_step_was_stored_in():
    tree = make_tree()
    tree.settings["dtype"] = "bfloat16"  # what a search on a bfloat16 base records
    text = build_card(tree).text
    steps = re.findall(r"### Step `([^`]+)`.*?```yaml\n(.*?)```", text, re.S)
    assert len(steps) == 3
    for _, body in steps:
        config = yaml.safe_load(body)
        assert (config["dtype"], config["out_dtype"]) == ("float32", "bfloat16")


def test_run_recipes_and_the_lineage_give_the_same_steps():
    """A search's full (nested) recipe and the lineage's step recipes describe one merge."""
    from hub_merge.merge.recipe import MergeRecipe

    tree = make_tree()
    src = {n.id: n.source for n in tree.originals("g2-1")}
    g11 = MergeRecipe(method="slerp", parameters=SLERP_T, base=src["sort"], models=[src["add"]])
    nested = MergeRecipe(
        method="ties",
        parameters={"weight": 1.0, "density": 0.5},
        base=tree.nodes["base"].source,
        models=[g11, MergeRecipe(method="slerp", base=src["sort"], models=[src["lora-reverse"]])],
    )
    assert nested.leaves()[1:] == [src["sort"], src["add"], src["lora-reverse"]]
    lineage = step_recipe(tree, "g2-1")
    # a nested run recipe is exported step by step through the lineage, not as one config
    assert step_recipe(tree, "g2-1", {"g2-1": nested}) == lineage
    assert [e.model for e in lineage.models] == ["./g1-1", "./g1-2"]
    # a one-step recipe given by the caller is used as is
    assert step_recipe(tree, "g1-1", {"g1-1": g11}) == g11


def _run_folder(tmp_path: Path, tree: FamilyTree) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    tree.save(run / "family_tree.json")
    (run / "fitness.png").write_bytes(b"\x89PNG fake fitness plot")
    return run


def test_write_card_writes_readme_json_and_images(tmp_path):
    tree = make_tree()
    run = _run_folder(tmp_path, tree)
    result = write_card(run, repo_id="me/merged")
    out = run / "card"  # no materialised winner folder in this run
    assert result.readme == out / "README.md"
    assert ModelCard.load(out / "README.md").data.base_model_relation == "merge"
    assert (out / "fitness.png").read_bytes() == b"\x89PNG fake fitness plot"
    assert (out / "kinship.png").read_bytes()[:4] == b"\x89PNG"  # heatmap drawn from the tree
    text = (out / "README.md").read_text()
    assert "![Fitness by generation](fitness.png)" in text
    assert "![Kinship heatmap](kinship.png)" in text
    assert "family_tree.png" not in text  # not in the run, so not referenced

    record = json.loads((out / "hub_merge.json").read_text())
    assert record["node"] == "g2-1"
    back = FamilyTree.from_dict(record["lineage"])
    assert list(back.nodes) == list(tree.nodes)
    assert back.nodes["g2-1"].parameters == tree.nodes["g2-1"].parameters
    assert record["kinship"]["ids"] == tree.kinship_ids
    assert [s["node"] for s in record["recipe"]["steps"]] == ["g1-1", "g1-2", "g2-1"]
    assert record["recipe"]["steps"][-1]["recipe"]["method"] == "ties"
    assert record["recipe"]["command"].startswith("hub-merge search")
    assert set(record["versions"]) >= {
        "hub-merge",
        "torch",
        "transformers",
        "peft",
        "mergekit",
        "huggingface_hub",
        "safetensors",
    }
    assert record["versions"]["torch"]


def test_no_token_ever_reaches_the_card(tmp_path, monkeypatch):
    token = "hf_" + "Zq9" * 11
    monkeypatch.setenv("HF_TOKEN", token)
    tree = make_tree()
    run = _run_folder(tmp_path, tree)
    assert main(["card", str(run), "--repo", "me/merged"]) == 0
    for name in ("README.md", "hub_merge.json"):
        assert token not in (run / "card" / name).read_text()
    # and a card that somehow carries the token is refused before it is written
    tree.nodes["sort"].path = f"/data/{token}/sort"
    tree.save(run / "family_tree.json")
    (run / "card" / "README.md").unlink()
    assert main(["card", str(run)]) == 5
    assert not (run / "card" / "README.md").exists()


def test_cli_card_writes_into_the_winner_folder_and_reports_errors(tmp_path, capsys):
    tree = make_tree(adapter_license="mit")
    run = _run_folder(tmp_path, tree)
    (run / "winner").mkdir()
    assert main(["card", str(run)]) == 5  # license conflict: exit code of LicenseConflictError
    err = capsys.readouterr().err
    assert "lora-reverse" in err and "--license" in err
    assert not (run / "winner" / "README.md").exists()

    assert main(["card", str(run), "--license", "mit", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["readme"] == str(run / "winner" / "README.md")
    assert printed["license"] == "mit"
    assert ModelCard.load(run / "winner" / "README.md").data.license == "mit"

    assert main(["card", str(run), "--node", "add", "--license", "mit"]) == 2
    assert "original" in capsys.readouterr().err


def test_adapter_output_is_carded_as_peft(tmp_path):
    run = _run_folder(tmp_path, make_tree())
    out = tmp_path / "merged-adapter"
    out.mkdir()
    (out / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    write_card(run, out, repo_id="me/merged-lora")
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "peft"
    assert 'AutoPeftModelForCausalLM.from_pretrained("me/merged-lora")' in card.text
    validate_card(card)


def test_packaged_template_is_the_top_level_template():
    assert template_path().read_text() == (ROOT / "model_card_template.md").read_text()


def test_card_of_a_real_search_run_parses(tiny_zoo, tmp_path):
    from hub_merge import search

    result = search.greedy_search(
        search.SearchConfig(
            base=str(tiny_zoo.base),
            experts=[str(tiny_zoo.experts["add"]), str(tiny_zoo.adapters["sort"])],
            tasks=[str(tiny_zoo.tasks["add"]), str(tiny_zoo.tasks["sort"])],
            out=str(tmp_path / "run"),
            settings={"k": 2, "generations": 1},
            limit=4,
            device="cpu",
            progress=False,
            materialize=["g1-1"],
        )
    )
    written = write_card(tmp_path / "run", node_id="g1-1", repo_id="me/zoo-merge")
    assert written.readme == tmp_path / "run" / "nodes" / "g1-1" / "README.md"
    card = ModelCard.load(written.readme)
    validate_card(card)
    assert card.data.license == "apache-2.0"  # the zoo's models all carry apache-2.0
    lineage = {e["id"]: e for e in card.data.hub_merge["lineage"]}
    assert set(lineage) == set(result.tree.nodes)
    assert "family_tree.png" in card.text and "fitness.png" in card.text
    # the model index reports the held-out test rows, and says so
    test = result.tree.test_scores["g1-1"]
    assert {r.dataset_split for r in card.data.eval_results} == {"test"}
    values = {r.task_name: r.metric_value for r in card.data.eval_results}
    assert set(values) == {"add", "sort"}
    assert all(math.isclose(values[t], test[t], rel_tol=1e-5) for t in values)
    # the body sets it against the baselines on the same rows
    assert "Held-out test rows" in card.text and "`uniform`" in card.text
    assert "hash of the prompt" in card.text and "Top-k greedy merging" in card.text


def test_local_hub_accepts_the_card_and_files_it_in_the_model_tree(local_hub, tmp_path):
    import httpx
    from huggingface_hub import HfApi

    run = _run_folder(tmp_path, make_tree())
    write_card(run, repo_id="alice/merged")
    readme = (run / "card" / "README.md").read_text()
    response = httpx.post(
        f"{local_hub.endpoint}/api/validate-yaml", json={"repoType": "model", "content": readme}
    )
    assert response.status_code == 200, response.text
    assert response.json()["errors"] == []

    api = HfApi(endpoint=local_hub.endpoint, token=local_hub.token)
    api.create_repo("alice/merged")
    api.upload_folder(repo_id="alice/merged", folder_path=run / "card")
    children = [m.id for m in api.list_models(filter="base_model:merge:zoo/tiny-add")]
    assert children == ["alice/merged"]
    # the LoRA adapter's model tree shows the merge too; the shared base's does not list it
    # as a merge of the base (it is no parent)
    via_adapter = api.list_models(filter="base_model:merge:zoo/tiny-lora-reverse")
    assert [m.id for m in via_adapter] == ["alice/merged"]
    assert [m.id for m in api.list_models(filter="base_model:merge:zoo/tiny-base")] == []
    info = api.model_info("alice/merged")
    assert info.card_data.base_model_relation == "merge"
    assert local_hub.token not in readme
