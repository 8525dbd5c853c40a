"""`hub-merge hub serve` as real processes: shared data folders, kill -9, tokens off argv."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_download

from hub_merge.cli import main

TOKEN = "hf_alice"


def _serve(
    data: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "hub_merge", "hub", "serve", "--data", str(data), *args]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, **(env or {})},
    )
    url = proc.stdout.readline().strip()
    assert url.startswith("http://127.0.0.1:"), "hub serve did not print its URL"
    return proc, url


def _stop(*procs: subprocess.Popen) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
            p.wait(timeout=20)


def _serve_alice(data: Path) -> tuple[subprocess.Popen, str]:
    return _serve(data, env={"HUB_MERGE_HUB_TOKENS": f"alice:{TOKEN}:write"})


def test_two_servers_on_one_folder_lose_no_commit(tmp_path):
    data = tmp_path / "hub"
    (a, url_a), (b, url_b) = _serve_alice(data), _serve_alice(data)
    try:
        HfApi(endpoint=url_a, token=TOKEN).create_repo("alice/shared")
        n = 8
        jobs = [(url, f"{tag}{i}") for tag, url in (("a", url_a), ("b", url_b)) for i in range(n)]

        def commit(job: tuple[str, str]) -> str:
            url, key = job
            ops = [
                CommitOperationAdd(f"{key}.txt", key.encode()),
                CommitOperationAdd(f"{key}.safetensors", hashlib.sha256(key.encode()).digest()),
            ]
            api = HfApi(endpoint=url, token=TOKEN)
            return api.create_commit("alice/shared", ops, commit_message=key).oid

        with ThreadPoolExecutor(len(jobs)) as pool:
            oids = list(pool.map(commit, jobs))
        api = HfApi(endpoint=url_b, token=TOKEN)
        history = api.list_repo_commits("alice/shared")
        # All land, one after another: the history holds every commit, and no other commit
        # object exists on disk (a lost ref update would leave an orphan behind).
        assert {c.title for c in history} == {k for _, k in jobs} | {"initial commit"}
        assert set(oids) <= {c.commit_id for c in history}
        on_disk = list((data / "repos" / "models" / "alice" / "shared" / "commits").glob("*.json"))
        assert len(on_disk) == len(history) == len(jobs) + 1
        files = set(api.list_repo_files("alice/shared"))
        for url, key in jobs:
            assert {f"{key}.txt", f"{key}.safetensors"} <= files
            p = hf_hub_download(
                "alice/shared",
                f"{key}.safetensors",
                endpoint=url_a if url == url_b else url_b,
                token=TOKEN,
                cache_dir=tmp_path / "cache",
            )
            assert Path(p).read_bytes() == hashlib.sha256(key.encode()).digest()
    finally:
        _stop(a, b)


def _whole(data: Path) -> list[str]:
    """What is half-made under ``data``: every file must be a blob named by its sha256, a JSON
    document that parses, or an empty marker (locks, the per-repo LFS ledger)."""
    bad = []
    for p in data.rglob("*"):
        if not p.is_file():
            continue
        rel = p.relative_to(data)
        if rel.parts[:2] == ("blobs", "sha256"):
            if hashlib.sha256(p.read_bytes()).hexdigest() != p.name:
                bad.append(f"{rel}: bytes do not match the name")
        elif p.suffix == ".json":
            try:
                json.loads(p.read_text())
            except ValueError:
                bad.append(f"{rel}: not JSON")
        elif p.stat().st_size:
            bad.append(f"{rel}: stray file of {p.stat().st_size} bytes")
    return bad


def _listing(data: Path) -> set[Path]:
    """Every path under ``data``, listed while the server may be moving files."""
    while True:
        try:
            return set(data.rglob("*"))
        except FileNotFoundError:  # a folder vanished mid-walk: list again
            continue


def _size(path: Path) -> int:
    try:
        return path.stat().st_size if path.is_file() else 0
    except FileNotFoundError:
        return 0


def _wait_for_new_bytes(data: Path, before: set[Path], timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        # The server renames and removes its temporary files as it goes, so a
        # file listed here may be gone by the time it is measured.
        if any(_size(p) for p in _listing(data) if p not in before):
            return
        time.sleep(0.02)
    raise AssertionError("the server never started writing")


def test_kill_9_mid_commit_then_restart_leaves_nothing_half_made(tmp_path):
    data = tmp_path / "hub"
    proc, url = _serve_alice(data)
    api = HfApi(endpoint=url, token=TOKEN)
    api.create_repo("alice/m")
    head = api.upload_file(path_or_fileobj=b"v1", path_in_repo="a.txt", repo_id="alice/m").oid
    auth = {"authorization": f"Bearer {TOKEN}"}
    try:
        # 1. Killed while the weights of a commit stream in.
        weights = os.urandom(8 * 1024 * 1024)
        oid = hashlib.sha256(weights).hexdigest()
        batch = httpx.post(
            f"{url}/alice/m.git/info/lfs/objects/batch",
            json={"operation": "upload", "objects": [{"oid": oid, "size": len(weights)}]},
            headers=auth,
        ).json()
        href = batch["objects"][0]["actions"]["upload"]["href"]
        hold = threading.Event()

        def body():
            yield weights[: 4 * 1024 * 1024]
            hold.wait(60)
            yield weights[4 * 1024 * 1024 :]

        before = _listing(data)
        put = threading.Thread(target=lambda: _swallow(httpx.put, href, content=body()))
        put.start()
        _wait_for_new_bytes(data, before)
        proc.kill()
        proc.wait(timeout=20)
        hold.set()
        put.join(timeout=30)

        # 2. Killed while a large commit is being written.
        proc, url = _serve_alice(data)
        lines = [json.dumps({"key": "header", "value": {"summary": "big"}})]
        for i in range(1500):
            content = hashlib.sha256(str(i).encode()).hexdigest()
            value = {"path": f"d/{i}.txt", "content": _b64(content), "encoding": "base64"}
            lines.append(json.dumps({"key": "file", "value": value}))
        before = _listing(data)
        post = threading.Thread(
            target=lambda: _swallow(
                httpx.post,
                f"{url}/api/models/alice/m/commit/main",
                content="\n".join(lines).encode(),
                headers={**auth, "content-type": "application/x-ndjson"},
                timeout=60,
            )
        )
        post.start()
        _wait_for_new_bytes(data, before)
        proc.kill()
        proc.wait(timeout=20)
        post.join(timeout=60)

        proc, url = _serve_alice(data)  # the restart tidies what the dead process left
        assert _whole(data) == []
        api = HfApi(endpoint=url, token=TOKEN)
        info = api.model_info("alice/m")
        files = set(api.list_repo_files("alice/m"))
        if info.sha == head:
            assert files == {".gitattributes", "a.txt"}
        else:  # the big commit completed just before the kill: then all of it is there
            assert files == {".gitattributes", "a.txt"} | {f"d/{i}.txt" for i in range(1500)}
        new = api.upload_file(path_or_fileobj=b"v2", path_in_repo="a.txt", repo_id="alice/m").oid
        history = [c.commit_id for c in api.list_repo_commits("alice/m")]
        assert history[0] == new and history[1] == info.sha and len(history) == len(set(history))
        p = hf_hub_download(
            "alice/m", "a.txt", revision=head, endpoint=url, token=TOKEN, cache_dir=tmp_path / "c"
        )
        assert Path(p).read_bytes() == b"v1"
    finally:
        _stop(proc)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _swallow(fn, *args, **kwargs) -> None:
    try:
        fn(*args, **kwargs)
    except httpx.HTTPError:
        pass  # the server was killed under it: expected


def test_tokens_come_from_a_file_and_the_environment_not_argv(tmp_path, capsys):
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("# the team's tokens\nalice:hf_from_file:write\n\n")
    tokens.chmod(0o600)
    env = {"HUB_MERGE_HUB_TOKENS": "bob:hf_from_env:read,carol:hf_carol"}
    proc, url = _serve(tmp_path / "d", "--token-file", str(tokens), env=env)
    try:
        assert HfApi(endpoint=url, token="hf_from_file").whoami()["name"] == "alice"
        assert HfApi(endpoint=url, token="hf_from_env").whoami()["name"] == "bob"
        assert HfApi(endpoint=url, token="hf_carol").whoami()["name"] == "carol"
        r = httpx.post(
            f"{url}/api/repos/create",
            json={"name": "x"},
            headers={"authorization": "Bearer hf_from_env"},
        )
        assert r.status_code == 403  # bob's token is read-only
        argv = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        assert b"hf_from_file" not in argv and b"hf_from_env" not in argv
    finally:
        _stop(proc)
    assert main(["hub", "serve", "--help"]) == 0
    helptext = capsys.readouterr().out
    assert "--token-file" in helptext and "HUB_MERGE_HUB_TOKENS" in helptext
    tokens.write_text("alice:hf_secret_typo:admin\n")
    assert main(["hub", "serve", "--data", str(tmp_path / "d"), "--token-file", str(tokens)]) == 2
    err = capsys.readouterr().err
    assert "line 1" in err and "hf_secret_typo" not in err


def test_cli_and_server_name_the_same_environment_variable():
    from hub_merge.cli.hub import TOKENS_ENV as cli_name
    from hub_merge.localhub import TOKENS_ENV

    assert cli_name == TOKENS_ENV


@pytest.fixture(autouse=True)
def _no_stray_tokens(monkeypatch):
    monkeypatch.delenv("HUB_MERGE_HUB_TOKENS", raising=False)
