"""One publish path: the card writer is picked by the folder's kind; one license rule for all."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from hub_merge.card import choose_license, resolve_license
from hub_merge.card_rules import parse_front_matter
from hub_merge.errors import ConfigError, LicenseConflictError
from hub_merge.lineage import FamilyTree, LineageNode
from hub_merge.moe.card import build_moe_card, license_of, write_moe_readme
from hub_merge.publish import CARD_WRITERS, folder_kind, publish


def _manifest(license: str = "apache-2.0") -> dict:
    experts = [
        {
            "id": f"zoo/{n}",
            "repo_id": f"zoo/{n}",
            "revision": "b" * 40,
            "kind": "adapter",
            "name": n,
            "prompts": {"count": 3, "source": f"{n}.jsonl", "sha256": "c" * 64},
        }
        for n in ("add", "sort")
    ]
    return {
        "kind": "moe",
        "license": license,
        "base": {"id": "zoo/base", "revision": "a" * 40},
        "experts": experts,
        "architecture": "mixtral",
        "router_mode": "hidden",
        "top_k": 1,
        "settings": {"shared": "base"},
        "parameters": {"total": 2_500_000, "active": 1_500_000},
        "routing": {"positive prompts": {"mean": 0.875, "per_layer": [0.75, 1.0]}},
        "command": "hub-merge moe --base zoo/base ...",
    }


def _moe_folder(tmp_path: Path, license: str = "apache-2.0") -> Path:
    folder = tmp_path / "moe"
    folder.mkdir(parents=True)
    (folder / "hub_merge.json").write_text(json.dumps(_manifest(license)))
    return folder


def _run_folder(tmp_path: Path, adapter: bool) -> Path:
    run = tmp_path / "run"
    tree = FamilyTree(base=None)
    for n in ("a", "b"):
        tree.add(LineageNode(id=n, kind="expert", name=n, path=f"/m/{n}", license="mit"))
    tree.add(LineageNode(id="m", kind="merge", name="m", parents=["a", "b"], method="linear"))
    tree.winner = "m"
    (run / "winner").mkdir(parents=True)
    tree.save(run / "family_tree.json")
    if adapter:
        (run / "winner" / "adapter_config.json").write_text("{}")
    return run


def test_publish_picks_the_card_writer_by_the_folders_kind(tmp_path):
    assert folder_kind(_moe_folder(tmp_path)) == "moe"
    assert folder_kind(_run_folder(tmp_path / "full", adapter=False)) == "merge"
    assert folder_kind(_run_folder(tmp_path / "lora", adapter=True)) == "adapter"
    assert set(CARD_WRITERS) == {"merge", "adapter", "moe"}
    # a MoE has no nodes and chose its license when built: saying otherwise is refused in one
    # line, before the Hub is asked anything (no endpoint here would answer)
    with pytest.raises(ConfigError, match="MoE folder.*drop --node and --license"):
        publish(_moe_folder(tmp_path / "x"), "me/moe", license="mit", endpoint="http://0.0.0.0:9")


def test_the_moe_card_is_rendered_from_its_template_and_written_checked(tmp_path):
    folder = _moe_folder(tmp_path)
    card = write_moe_readme(folder, "me/tiny-moe")
    text = card.readme.read_text()
    meta = parse_front_matter(text)
    assert meta["base_model"] == ["zoo/add", "zoo/sort"] and meta["hub_merge"]["top_k"] == 1
    assert '"me/tiny-moe"' in text and "2.5M total, 1.5M active" in text
    assert "| 1 | sort | `zoo/sort` | adapter | 3 (sort.jsonl, sha256 `cccccccccccc`) |" in text
    assert "| positive prompts | 0.875 | 0.75, 1.00 |" in text
    assert card.node == "moe" and card.license == "apache-2.0"


def test_one_license_rule_for_merges_and_moes():
    tree = FamilyTree(base=None)
    for n, lic in (("a", "Apache-2.0"), ("b", "apache-2.0")):
        tree.add(LineageNode(id=n, kind="expert", name=n, path=f"/m/{n}", license=lic))
    tree.add(LineageNode(id="m", kind="merge", name="m", parents=["a", "b"], method="linear"))
    models = [SimpleNamespace(repo_id=n, path=None, license=lic) for n, lic in (("a", "Apache-2.0"), ("b", "apache-2.0"))]  # fmt: skip
    # case does not make a conflict, in either
    assert resolve_license(tree, "m").license == license_of(models, None) == "apache-2.0"
    models[1].license = "mit"
    tree.nodes["b"].license = "mit"
    with pytest.raises(LicenseConflictError, match="conflict") as merge_err:
        resolve_license(tree, "m")
    with pytest.raises(LicenseConflictError, match="conflict") as moe_err:
        license_of(models, None)
    assert "choose the merge's license" in str(merge_err.value)
    assert "choose the MoE's license" in str(moe_err.value)
    assert license_of(models, "mit") == "mit"
    # a license that is no Hub id is `other` plus its name, on both cards
    assert choose_license({"a": "my-terms"}).license == "other"
    meta = parse_front_matter(str(build_moe_card(_manifest("my-terms"), "me/moe")))
    assert meta["license"] == "other" and meta["license_name"] == "my-terms"
