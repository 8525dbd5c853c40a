"""The local Hub as the `hf` CLI and huggingface_hub see it: repos list/move/duplicate, paths
info, auth checks and request ids (issue 26, items 7 and 8), driven by the real client."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

HF = str(Path(sys.executable).with_name("hf"))


def _hf(hub, *args: str, token: str = "hf_alice_write") -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_TOKEN": token, "NO_COLOR": "1"}
    return subprocess.run([HF, *args], env=env, capture_output=True, text=True, timeout=120)


def test_hf_repos_list_move_and_duplicate(local_hub, tmp_path):
    api = HfApi(endpoint=local_hub.endpoint, token=local_hub.token)
    api.create_repo("alice/old")
    api.upload_file(path_or_fileobj=b"weights", path_in_repo="w/a.bin", repo_id="alice/old")
    api.create_branch("alice/old", branch="dev")
    head = api.model_info("alice/old").sha
    HfApi(endpoint=local_hub.endpoint, token="hf_bob_write").create_repo("bob/theirs")

    listed = _hf(local_hub, "repos", "list")
    assert listed.returncode == 0, listed.stderr
    assert "alice/old" in listed.stdout and "bob/theirs" not in listed.stdout

    moved = _hf(local_hub, "repos", "move", "alice/old", "alice/new")
    assert moved.returncode == 0, moved.stderr
    # As on the Hub, the old name redirects to the new one (test_localhub_hfsuite covers it).
    assert api.model_info("alice/old").id == "alice/new"
    assert api.model_info("alice/new").sha == head  # history, branches and files moved along
    assert {b.name for b in api.list_repo_refs("alice/new").branches} == {"main", "dev"}

    dup = _hf(local_hub, "repos", "duplicate", "alice/new", "alice/copy", "--private")
    assert dup.returncode == 0, dup.stderr
    copy = api.model_info("alice/copy")
    assert copy.sha == head and copy.private
    got = api.hf_hub_download("alice/copy", "w/a.bin", local_dir=tmp_path)
    assert Path(got).read_bytes() == b"weights"
    assert api.model_info("alice/new").sha == head  # the original is untouched
    # A second duplicate onto an existing name is a 409, which the client reports.
    again = _hf(local_hub, "repos", "duplicate", "alice/new", "alice/copy")
    assert again.returncode != 0


def test_paths_info_and_auth_check(local_hub):
    api = HfApi(endpoint=local_hub.endpoint, token=local_hub.token)
    api.create_repo("alice/m")
    api.upload_file(path_or_fileobj=b"x", path_in_repo="a/b.txt", repo_id="alice/m")
    api.upload_file(path_or_fileobj=b"\0" * 10, path_in_repo="w.safetensors", repo_id="alice/m")
    info = {
        p.path: p for p in api.get_paths_info("alice/m", ["a/b.txt", "a", "w.safetensors", "no"])
    }
    assert set(info) == {"a/b.txt", "a", "w.safetensors"}
    assert info["a/b.txt"].size == 1 and info["w.safetensors"].lfs.size == 10
    assert type(info["a"]).__name__ == "RepoFolder"
    api.auth_check("alice/m", write=True)
    bob = HfApi(endpoint=local_hub.endpoint, token="hf_bob_write")
    bob.auth_check("alice/m")  # public: bob may read
    with pytest.raises(HfHubHTTPError) as err:
        bob.auth_check("alice/m", write=True)
    assert err.value.response.status_code == 403
    api.update_repo_settings("alice/m", private=True)
    with pytest.raises(RepositoryNotFoundError):
        bob.auth_check("alice/m")


def test_every_answer_has_a_request_id(local_hub):
    ids = set()
    for path in ("/api/models", "/api/models/alice/none", "/api/whoami-v2"):
        r = httpx.get(local_hub.endpoint + path)
        ids.add(r.headers["x-request-id"])
    assert len(ids) == 3


def test_upload_folder_follows_the_repos_gitignore_and_gitattributes(local_hub, tmp_path):
    api = HfApi(endpoint=local_hub.endpoint, token=local_hub.token)
    api.create_repo("alice/m")
    api.upload_file(
        path_or_fileobj=b"*.log\n!keep.log\nbuild/\n", path_in_repo=".gitignore", repo_id="alice/m"
    )
    attrs = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.json filter=lfs -text\n"
    api.upload_file(path_or_fileobj=attrs, path_in_repo=".gitattributes", repo_id="alice/m")
    folder = tmp_path / "up"
    for rel, data in {
        "a.log": b"noise",
        "keep.log": b"kept",
        "build/out.txt": b"built",
        "config.json": b"{}",
        "notes.txt": b"text",
    }.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    api.upload_folder(folder_path=folder, repo_id="alice/m")
    files = {f.path: f for f in api.list_repo_tree("alice/m", recursive=True) if hasattr(f, "size")}
    assert set(files) == {".gitignore", ".gitattributes", "keep.log", "config.json", "notes.txt"}
    assert files["config.json"].lfs is not None and files["notes.txt"].lfs is None


def test_formatted_commits_super_squash_and_underscore_users(tmp_path):
    from hub_merge.localhub import LocalHub

    with LocalHub(tmp_path / "d", tokens={"t": ("__dummy_user__", "write")}) as hub:
        api = HfApi(endpoint=hub.endpoint, token="t")
        assert api.whoami()["name"] == "__dummy_user__"
        api.create_repo("__dummy_user__/m")
        api.upload_file(
            path_or_fileobj=b"1", path_in_repo="a.txt", repo_id="__dummy_user__/m",
            commit_message="<b>one</b>", commit_description="line & more",
        )  # fmt: skip
        api.upload_file(path_or_fileobj=b"2", path_in_repo="b.txt", repo_id="__dummy_user__/m")
        top = api.list_repo_commits("__dummy_user__/m", formatted=True)[1]
        assert top.formatted_title == "&lt;b&gt;one&lt;/b&gt;"
        assert top.formatted_message == "<p>line &amp; more</p>"
        api.super_squash_history("__dummy_user__/m", commit_message="squashed")
        commits = api.list_repo_commits("__dummy_user__/m")
        assert [c.title for c in commits] == ["squashed"]
        assert sorted(api.list_repo_files("__dummy_user__/m")) == [
            ".gitattributes",
            "a.txt",
            "b.txt",
        ]


def test_errors_read_as_the_hubs(local_hub):
    """The texts huggingface_hub's own tests match on."""
    from huggingface_hub import CommitOperationAdd
    from huggingface_hub.errors import RevisionNotFoundError

    api = HfApi(endpoint=local_hub.endpoint, token=local_hub.token)
    api.create_repo("alice/a")
    api.create_repo("alice/b")
    parent = api.model_info("alice/a").sha
    api.upload_file(path_or_fileobj=b"1", path_in_repo="x", repo_id="alice/a")
    with pytest.raises(HfHubHTTPError, match="The branch was updated since you opened this page"):
        api.create_commit(
            "alice/a", [CommitOperationAdd("y", b"2")], commit_message="m", parent_commit=parent
        )
    api.create_branch("alice/a", branch="cool")
    with pytest.raises(HfHubHTTPError, match="Reference refs/heads/cool already exists"):
        api.create_branch("alice/a", branch="cool")
    api.create_branch("alice/a", branch="cool", exist_ok=True)
    with pytest.raises(HfHubHTTPError, match="Cannot delete refs/heads/main"):
        api.delete_branch("alice/a", branch="main")
    with pytest.raises(RevisionNotFoundError, match="Invalid rev id"):
        api.delete_branch("alice/a", branch="missing")
    with pytest.raises(HfHubHTTPError, match=r"A model repository called alice/b already exists"):
        api.move_repo("alice/a", "alice/b")


def test_card_metadata_after_leading_blank_lines_is_read(local_hub):
    """huggingface_hub finds front matter after blank lines; so do validate-yaml and the card
    metadata a commit keeps."""
    card = "\n\n---\nlicense: not-a-license\n---\n# card\n"
    r = httpx.post(f"{local_hub.endpoint}/api/validate-yaml", json={"content": card})
    assert r.status_code == 400 and "license" in r.json()["errors"][0]["message"]
    api = HfApi(endpoint=local_hub.endpoint, token=local_hub.token)
    api.create_repo("alice/c")
    good = b"\n\n---\nlicense: mit\ntags: [merge]\n---\n# card\n"
    api.upload_file(path_or_fileobj=good, path_in_repo="README.md", repo_id="alice/c")
    info = api.model_info("alice/c")
    assert info.card_data.to_dict() == {"license": "mit", "tags": ["merge"]}
    assert {"merge", "license:mit"} <= set(info.tags)
