"""The real huggingface_hub client against the local Hub server."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import httpx
import pytest
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from hub_merge.cli import main
from hub_merge.localhub import LocalHub

CARD = """---
base_model: org/base
base_model_relation: adapter
library_name: peft
license: apache-2.0
tags: [lora]
---
# An adapter
"""


def _folder(tmp: Path, weights: bytes) -> Path:
    f = tmp / "up"
    (f / "sub").mkdir(parents=True, exist_ok=True)
    (f / "README.md").write_text(CARD)
    (f / "adapter_model.safetensors").write_bytes(weights)
    (f / "sub" / "notes.txt").write_text("hello")
    return f


@pytest.fixture
def api(local_hub) -> HfApi:
    return HfApi(endpoint=local_hub.endpoint, token=local_hub.token)


def test_upload_read_download_at_branch_tag_and_sha(local_hub, api, tmp_path):
    weights = os.urandom(3000)
    api.create_repo("alice/ad")
    api.create_repo("alice/ad", exist_ok=True)
    first = api.upload_folder(folder_path=_folder(tmp_path, weights), repo_id="alice/ad")
    info = api.model_info("alice/ad", files_metadata=True)
    assert info.sha == first.oid
    assert info.card_data.base_model == "org/base"
    lfs = {s.rfilename: s.lfs for s in info.siblings}
    assert lfs["adapter_model.safetensors"].sha256 and lfs["README.md"] is None
    api.create_tag("alice/ad", tag="v1")
    api.create_branch("alice/ad", branch="dev")
    second = api.upload_file(
        path_or_fileobj=b"v2", path_in_repo="sub/notes.txt", repo_id="alice/ad"
    )
    cache = tmp_path / "cache"
    for rev, expected in (
        ("v1", b"hello"),
        ("dev", b"hello"),
        (first.oid, b"hello"),
        ("main", b"v2"),
    ):
        p = hf_hub_download(
            "alice/ad",
            "sub/notes.txt",
            revision=rev,
            endpoint=local_hub.endpoint,
            token=local_hub.token,
            cache_dir=cache,
        )
        assert Path(p).read_bytes() == expected
        snap = Path(
            snapshot_download(
                "alice/ad",
                revision=rev,
                endpoint=local_hub.endpoint,
                token=local_hub.token,
                cache_dir=cache,
            )
        )
        assert (snap / "adapter_model.safetensors").read_bytes() == weights
    commits = api.list_repo_commits("alice/ad")
    assert [c.commit_id for c in commits[:2]] == [second.oid, first.oid]
    refs = api.list_repo_refs("alice/ad")
    assert {t.name: t.target_commit for t in refs.tags} == {"v1": first.oid}
    with pytest.raises(RevisionNotFoundError):
        api.model_info("alice/ad", revision="nope")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("alice/ad", "missing.txt", endpoint=local_hub.endpoint, cache_dir=cache)


def test_listing_by_base_model_relation(local_hub, api, tmp_path):
    api.create_repo("alice/ad")
    api.upload_folder(folder_path=_folder(tmp_path, b"\0" * 10), repo_id="alice/ad")
    api.create_repo("alice/other")
    found = list(api.list_models(filter="base_model:adapter:org/base"))
    assert [m.id for m in found] == ["alice/ad"]
    assert not list(api.list_models(filter="base_model:merge:org/base"))
    full = list(api.list_models(author="alice", search="ad", full=True))
    assert full[0].card_data.license == "apache-2.0" and full[0].siblings
    assert {m.id for m in api.list_models(author="alice")} == {"alice/ad", "alice/other"}


def test_pull_request_and_stale_parent(local_hub, api):
    api.create_repo("alice/pr")
    pr = api.upload_file(
        path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="alice/pr", create_pr=True
    )
    assert pr.pr_revision == "refs/pr/1"
    assert api.file_exists("alice/pr", "x.txt", revision="refs/pr/1")
    assert not api.file_exists("alice/pr", "x.txt")
    head = api.model_info("alice/pr").sha
    api.upload_file(path_or_fileobj=b"y", path_in_repo="y.txt", repo_id="alice/pr")
    with pytest.raises(HfHubHTTPError) as err:
        api.upload_file(
            path_or_fileobj=b"z", path_in_repo="z.txt", repo_id="alice/pr", parent_commit=head
        )
    assert err.value.response.status_code == 412


def _commit(local_hub, lines: list, token=None) -> httpx.Response:
    body = b"".join((x if isinstance(x, bytes) else json.dumps(x).encode()) + b"\n" for x in lines)
    return httpx.post(
        f"{local_hub.endpoint}/api/models/alice/bad/commit/main",
        content=body,
        headers={
            "authorization": f"Bearer {token or local_hub.token}",
            "content-type": "application/x-ndjson",
        },
    )


def test_bad_input_is_refused_and_changes_nothing(local_hub, api):
    api.create_repo("alice/bad")
    head = api.model_info("alice/bad").sha
    header = {"key": "header", "value": {"summary": "s"}}
    content = base64.b64encode(b"x").decode()
    for path in ("../evil", "/abs", "a\\b", "a/../b", ".git/config"):
        r = _commit(
            local_hub,
            [
                header,
                {"key": "file", "value": {"path": path, "content": content, "encoding": "base64"}},
            ],
        )
        assert r.status_code == 422, path
    assert _commit(local_hub, [header, b"{not json"]).status_code == 400
    missing = {
        "key": "lfsFile",
        "value": {"path": "w.bin", "algo": "sha256", "oid": "a" * 64, "size": 3},
    }
    assert _commit(local_hub, [header, missing]).status_code == 400
    bad_card = {
        "key": "file",
        "value": {
            "path": "README.md",
            "encoding": "base64",
            "content": base64.b64encode(b"---\nbase_model_relation: mix\n---\n").decode(),
        },
    }
    assert _commit(local_hub, [header, bad_card]).status_code == 400
    r = httpx.post(
        f"{local_hub.endpoint}/api/models/alice/bad/commit/nobranch",
        content=b"",
        headers={"authorization": f"Bearer {local_hub.token}"},
    )
    assert r.status_code in (400, 404)
    # LFS bytes that do not match their sha256 are refused by the signed upload link.
    batch = httpx.post(
        f"{local_hub.endpoint}/alice/bad.git/info/lfs/objects/batch",
        json={"operation": "upload", "objects": [{"oid": "b" * 64, "size": 4}]},
        headers={"authorization": f"Bearer {local_hub.token}"},
    ).json()
    href = batch["objects"][0]["actions"]["upload"]["href"]
    assert httpx.put(href, content=b"abcd").status_code == 400
    assert httpx.put(href, content=b"abc").status_code == 400
    assert httpx.put(href.replace("sig=", "sig=0"), content=b"abcd").status_code == 403
    assert api.model_info("alice/bad").sha == head
    assert [f for f in api.list_repo_files("alice/bad")] == [".gitattributes"]


def test_oversized_request_gets_413(tmp_path):
    with LocalHub(tmp_path / "d", tokens={"t": ("alice", "write")}, max_request_bytes=1000) as hub:
        api = HfApi(endpoint=hub.endpoint, token="t")
        api.create_repo("alice/big")
        with pytest.raises(HfHubHTTPError) as err:
            api.upload_file(
                path_or_fileobj=b"a" * 5000, path_in_repo="big.txt", repo_id="alice/big"
            )
        assert err.value.response.status_code == 413
        assert api.list_repo_files("alice/big") == [".gitattributes"]


def test_auth_private_repos_and_rights(local_hub, api):
    api.create_repo("alice/secret", private=True)
    anon = HfApi(endpoint=local_hub.endpoint, token=False)
    bob = HfApi(endpoint=local_hub.endpoint, token="hf_bob_write")
    reader = HfApi(endpoint=local_hub.endpoint, token=local_hub.read_token)
    for other in (anon, bob):
        with pytest.raises(RepositoryNotFoundError):
            other.model_info("alice/secret")
        assert "alice/secret" not in {m.id for m in other.list_models()}
    assert reader.model_info("alice/secret").private is True
    with pytest.raises(HfHubHTTPError) as err:
        reader.upload_file(path_or_fileobj=b"x", path_in_repo="x", repo_id="alice/secret")
    assert err.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as err:
        bob.create_repo("alice/new")
    assert err.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as err:
        HfApi(endpoint=local_hub.endpoint, token="wrong").whoami()
    assert err.value.response.status_code == 401
    api.create_repo("alice/pub")
    assert anon.model_info("alice/pub").private is False


def test_restart_keeps_everything_and_resumed_download(tmp_path):
    tokens = {"t": ("alice", "write")}
    weights = os.urandom(200_000)
    with LocalHub(tmp_path / "d", tokens=tokens) as hub:
        api = HfApi(endpoint=hub.endpoint, token="t")
        api.create_repo("alice/m")
        sha = api.upload_folder(folder_path=_folder(tmp_path, weights), repo_id="alice/m").oid
        api.create_tag("alice/m", tag="v1")
    with LocalHub(tmp_path / "d", tokens=tokens) as hub:
        api = HfApi(endpoint=hub.endpoint, token="t")
        assert api.model_info("alice/m", revision="v1").sha == sha
        hub.fail_next_download("adapter_model.safetensors", after_bytes=70_000)
        p = hf_hub_download(
            "alice/m",
            "adapter_model.safetensors",
            endpoint=hub.endpoint,
            token="t",
            cache_dir=tmp_path / "c",
        )
        assert Path(p).read_bytes() == weights
        assert not hub.hub.fail_downloads  # the hook fired


def test_range_and_head_headers(local_hub, api):
    api.create_repo("alice/r")
    api.upload_file(path_or_fileobj=b"0123456789", path_in_repo="w.safetensors", repo_id="alice/r")
    url = f"{local_hub.endpoint}/alice/r/resolve/main/w.safetensors"
    head = httpx.head(url)
    assert head.headers["X-Repo-Commit"] == api.model_info("alice/r").sha
    assert head.headers["X-Linked-Size"] == "10" and "X-Linked-Etag" in head.headers
    assert not any(k.lower().startswith("x-xet") for k in head.headers)
    r = httpx.get(url, headers={"Range": "bytes=3-5"})
    assert r.status_code == 206 and r.content == b"345"
    assert httpx.get(url, headers={"Range": "bytes=20-"}).status_code == 416


def test_validate_yaml_endpoint(local_hub):
    r = httpx.post(
        f"{local_hub.endpoint}/api/validate-yaml",
        json={"content": "---\nlicense: nope\n---\n", "repoType": "model"},
    )
    assert r.status_code == 400 and "license" in r.json()["errors"][0]["message"]
    ok = httpx.post(f"{local_hub.endpoint}/api/validate-yaml", json={"content": CARD})
    assert ok.status_code == 200 and ok.json()["errors"] == []


def test_cli_rejects_bad_token_spec(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HUB_MERGE_HUB_TOKENS", "nocolon")
    assert main(["hub", "serve", "--data", str(tmp_path)]) == 2
    assert "USER:TOKEN" in capsys.readouterr().err


def test_cli_refuses_a_token_in_argv(tmp_path, capsys):
    """A token in argv is readable by every local user (`ps`): refused in one line that says
    what to use instead, and never echoed."""
    argv = ["hub", "serve", "--data", str(tmp_path / "d"), "--token", "user:hf_argv_secret"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--token-file" in err and "HUB_MERGE_HUB_TOKENS" in err
    assert "hf_argv_secret" not in err
    assert not (tmp_path / "d").exists()  # refused before anything was served or made


def test_cli_serve_prints_url_and_serves(tmp_path):
    import subprocess
    import sys

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hub_merge",
            "hub",
            "serve",
            "--data",
            str(tmp_path / "d"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "HUB_MERGE_HUB_TOKENS": "alice:tok:write"},
    )
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        assert HfApi(endpoint=url, token="tok").whoami()["name"] == "alice"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_xet_token_routes_answer_after_the_usual_checks(local_hub, api):
    """Every scope, repo type and revision spelling gets a CAS URL and token (what
    huggingface_hub's _xet.py parses); the rights and id checks come first."""
    from huggingface_hub.utils import get_session
    from huggingface_hub.utils._xet import parse_xet_connection_info_from_headers

    api.create_repo("alice/xt", private=True)
    api.create_repo("alice/ds", repo_type="dataset")
    auth = {"authorization": f"Bearer {local_hub.token}"}
    base = local_hub.endpoint + "/api"
    for url in (
        f"{base}/models/alice/xt/xet-write-token/main",
        f"{base}/models/alice/xt/xet-read-token/refs%2Fpr%2F1",
        f"{base}/datasets/alice/ds/xet-read-token/None",
        f"{base}/datasets/alice/ds/xet-write-token",
    ):
        r = get_session().get(url, headers=auth)
        assert r.status_code == 200, url
        info = parse_xet_connection_info_from_headers(r.headers)
        assert info is not None and info.endpoint.startswith(local_hub.endpoint + "/xet-cas/")
        assert r.json()["accessToken"] == info.access_token != local_hub.token
    # The rights check and the repo id check come first, as on every repo route.
    anonymous = httpx.get(f"{base}/models/alice/xt/xet-write-token/main")
    assert anonymous.status_code in (401, 404) and "Xet" not in anonymous.text
    reader = httpx.get(
        f"{base}/models/alice/xt/xet-write-token/main",
        headers={"authorization": f"Bearer {local_hub.read_token}"},
    )
    assert reader.status_code == 403
    bad = httpx.get(f"{base}/models/alice/a--b/xet-write-token/main", headers=auth)
    assert bad.status_code == 400
    bad_rev = httpx.get(f"{base}/models/alice/xt/xet-write-token/a%0Ab", headers=auth)
    assert bad_rev.status_code == 400
