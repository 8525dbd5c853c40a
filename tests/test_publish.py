"""``publish`` / ``hub-merge push``: a search run's winner on a local Hub, with its card, in one commit."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from huggingface_hub import HfApi, hf_hub_download

from hub_merge.errors import AuthError, CardValidationError, ConfigError, LicenseConflictError
from hub_merge.hub import validate_card_on_hub
from hub_merge.localhub import LocalHub
from hub_merge.publish import publish

ZOO_TOKEN, WRITE, READ = "hf_zoo_write", "hf_alice_write", "hf_alice_read"


@dataclass
class Published:
    endpoint: str
    run: Path
    data: Path


@pytest.fixture(scope="module")
def hub_run(tiny_zoo, tmp_path_factory):
    """A local Hub holding part of the tiny zoo, and a finished search over it (2 experts)."""
    from hub_merge.search import SearchConfig, greedy_search
    from hub_merge.zoo import upload_zoo

    root = tmp_path_factory.mktemp("publish")
    tokens = {
        ZOO_TOKEN: ("hub-merge-zoo", "write"),
        WRITE: ("alice", "write"),
        READ: ("alice", "read"),
    }
    with LocalHub(root / "hub", tokens=tokens) as server:
        keys = ["base", "expert/add", "adapter/sort"]
        seeded = upload_zoo(tiny_zoo, endpoint=server.endpoint, token=ZOO_TOKEN, include=keys)
        greedy_search(
            SearchConfig(
                base=seeded.base,
                experts=[seeded.repo_ids["expert/add"], seeded.repo_ids["adapter/sort"]],
                tasks=[str(tiny_zoo.tasks["add"]), str(tiny_zoo.tasks["sort"])],
                out=str(root / "run"),
                settings={"k": 2, "generations": 1},
                limit=8,
                progress=False,
                endpoint=server.endpoint,
                token=WRITE,
                cache_dir=str(root / "cache"),
            )
        )
        yield Published(server.endpoint, root / "run", root / "hub")


def _copy_run(hub_run: Published, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(hub_run.run, run)
    return run


def test_push_round_trip_reads_back_identical_files_and_loads_by_repo_id(hub_run, tmp_path):
    run = _copy_run(hub_run, tmp_path)
    result = publish(run, "alice/merged", endpoint=hub_run.endpoint, token=WRITE)

    api = HfApi(endpoint=hub_run.endpoint, token=READ)
    sha = result.push.commit_sha
    assert api.model_info("alice/merged").sha == sha
    local = sorted(
        p.relative_to(result.folder).as_posix() for p in result.folder.rglob("*") if p.is_file()
    )
    remote = api.list_repo_files("alice/merged", revision=sha)
    assert (
        sorted(f for f in remote if f != ".gitattributes") == local
    )  # the Hub adds .gitattributes
    for name in ("model.safetensors", "README.md", "hub_merge.json", "config.json"):
        remote = hf_hub_download(
            "alice/merged",
            name,
            revision=sha,
            endpoint=hub_run.endpoint,
            token=READ,
            cache_dir=tmp_path / "dl",
        )
        assert Path(remote).read_bytes() == (result.folder / name).read_bytes(), name

    # The card the Hub stores is the one written, and the model tree lists the merge.
    info = api.model_info("alice/merged")
    assert info.card_data["base_model_relation"] == "merge"
    assert info.card_data["hub_merge"]["node"] == result.card.node
    parents = info.card_data["base_model"]
    parents = [parents] if isinstance(parents, str) else parents
    listed = api.list_models(filter=f"base_model:merge:{parents[0]}")
    assert "alice/merged" in [m.id for m in listed]

    # A fresh process loads it by repo id through HF_ENDPOINT, as any user would, and generates.
    code = (
        "import torch;from transformers import AutoModelForCausalLM, AutoTokenizer;"
        "tok=AutoTokenizer.from_pretrained('alice/merged');"
        "m=AutoModelForCausalLM.from_pretrained('alice/merged');"
        "ids=tok('add: 1+2=', return_tensors='pt');"
        "out=m.generate(**ids, max_new_tokens=4, do_sample=False);"
        "print('NEW', out.shape[1]-ids['input_ids'].shape[1])"
    )
    env = {
        **os.environ,
        "HF_ENDPOINT": hub_run.endpoint,
        "HF_HUB_CACHE": str(tmp_path / "proc-cache"),
        "HF_HUB_DISABLE_XET": "1",
    }
    env.pop("HF_TOKEN", None)  # a public repo reads anonymously
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout.split("NEW ")[1].split()[0]) >= 1  # it generated (EOS may stop it early)


def test_license_conflict_stops_the_push_before_anything_exists(hub_run, tmp_path):
    run = _copy_run(hub_run, tmp_path)
    tree = json.loads((run / "family_tree.json").read_text())
    experts = [n for n in tree["nodes"] if n["kind"] == "expert"]
    experts[0]["license"], experts[1]["license"] = "mit", "gpl-3.0"
    (run / "family_tree.json").write_text(json.dumps(tree))
    api = HfApi(endpoint=hub_run.endpoint, token=WRITE)

    with pytest.raises(LicenseConflictError, match="--license"):
        publish(run, "alice/conflicted", endpoint=hub_run.endpoint, token=WRITE)
    assert not api.repo_exists("alice/conflicted")

    result = publish(
        run, "alice/conflicted", license="gpl-3.0", endpoint=hub_run.endpoint, token=WRITE
    )
    assert api.model_info("alice/conflicted").card_data["license"] == "gpl-3.0"
    assert result.card.license == "gpl-3.0"


def test_the_hubs_validate_yaml_rejects_a_bad_card(hub_run):
    bad = "---\nlicense: apache-2.0\nbase_model: hub-merge-zoo/tiny-llama-base\nbase_model_relation: blend\n---\n\n# x\n"
    with pytest.raises(CardValidationError, match="base_model_relation"):
        validate_card_on_hub(bad, endpoint=hub_run.endpoint)
    good = bad.replace("blend", "merge")
    validate_card_on_hub(good, endpoint=hub_run.endpoint)


def test_read_token_cannot_push_and_creates_nothing(hub_run, tmp_path):
    run = _copy_run(hub_run, tmp_path)
    with pytest.raises(AuthError) as err:
        publish(run, "alice/readonly", endpoint=hub_run.endpoint, token=READ)
    assert READ not in str(err.value)
    assert not HfApi(endpoint=hub_run.endpoint, token=WRITE).repo_exists("alice/readonly")


def test_create_pr_leaves_main_unchanged(hub_run, tmp_path):
    run = _copy_run(hub_run, tmp_path)
    api = HfApi(endpoint=hub_run.endpoint, token=WRITE)
    api.create_repo("alice/reviewed")
    main_before = api.model_info("alice/reviewed").sha
    result = publish(run, "alice/reviewed", create_pr=True, endpoint=hub_run.endpoint, token=WRITE)
    assert result.push.pr_url and result.url == result.push.pr_url
    assert api.model_info("alice/reviewed").sha == main_before
    files = api.list_repo_files("alice/reviewed", revision=result.push.commit_sha)
    assert "model.safetensors" in files and "README.md" in files


def test_a_node_that_was_not_written_is_refused_with_the_fix(hub_run, tmp_path):
    run = _copy_run(hub_run, tmp_path)
    shutil.rmtree(run / "winner")  # as if the search had materialised nothing
    with pytest.raises(ConfigError, match="--save-node"):
        publish(run, "alice/other", endpoint=hub_run.endpoint, token=WRITE)
    with pytest.raises(ConfigError, match="nothing to publish"):
        publish(run, "alice/other", node_id="base", endpoint=hub_run.endpoint, token=WRITE)
    with pytest.raises(ConfigError, match="not a finished search run"):
        publish(tmp_path, "alice/other", endpoint=hub_run.endpoint, token=WRITE)
    assert not HfApi(endpoint=hub_run.endpoint, token=WRITE).repo_exists("alice/other")


def test_cli_push_prints_the_commit_and_never_the_token(hub_run, tmp_path, capsys):
    from hub_merge.cli import main

    run = _copy_run(hub_run, tmp_path)
    args = ["push", str(run), "--repo", "alice/from-cli", "--endpoint", hub_run.endpoint]
    assert main([*args, "--token", WRITE, "--json"]) == 0
    out = capsys.readouterr()
    data = json.loads(out.out)
    assert data["repo_id"] == "alice/from-cli" and len(data["commit_sha"]) == 40
    assert WRITE not in out.out + out.err
    assert HfApi(endpoint=hub_run.endpoint).model_info("alice/from-cli").sha == data["commit_sha"]

    code = main([*args[:3], "--repo", "alice/x", "--endpoint", hub_run.endpoint, "--token", READ])
    err = capsys.readouterr().err
    assert code != 0 and "Error:" in err and READ not in err
