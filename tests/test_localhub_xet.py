"""Uploads through Xet (hf_xet installed, HF_HUB_DISABLE_XET unset) to the local Hub's CAS routes."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from huggingface_hub import HfApi, hf_hub_download

from hub_merge.localhub import xet

pytest.importorskip("hf_xet")


@pytest.fixture
def xet_on(monkeypatch, tmp_path):
    """Xet as a default install has it (conftest turns it off for every other test), with its
    caches in this test's folder so no earlier upload is deduplicated against."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", False)
    monkeypatch.setenv("HF_XET_CACHE", str(tmp_path / "xet-cache"))


def _folder(tmp: Path) -> tuple[Path, dict[str, bytes]]:
    files = {
        "notes.txt": b"hello xet\n",
        "big.bin": os.urandom(1_500_000) + bytes(600_000),  # random and compressible parts
        "model.safetensors": b"\x10\x00\x00\x00\x00\x00\x00\x00{}              " + bytes(70_000),
    }
    d = tmp / "up"
    d.mkdir()
    for name, data in files.items():
        (d / name).write_bytes(data)
    return d, files


def _token(hub, repo: str, token: str, kind: str = "write") -> dict:
    r = httpx.get(
        f"{hub.endpoint}/api/models/{repo}/xet-{kind}-token/main",
        headers={"authorization": f"Bearer {token}"},
    )
    r.raise_for_status()
    return r.json()


def test_upload_folder_through_xet_then_download_the_same_bytes(local_hub, xet_on, tmp_path):
    api = HfApi(endpoint=local_hub.endpoint, token=local_hub.token)
    api.create_repo("alice/x")
    folder, files = _folder(tmp_path)
    info = api.upload_folder(folder_path=folder, repo_id="alice/x")
    assert info.oid in [c.commit_id for c in api.list_repo_commits("alice/x")]
    for name, data in files.items():
        p = hf_hub_download(
            "alice/x",
            name,
            endpoint=local_hub.endpoint,
            token=local_hub.token,
            cache_dir=tmp_path / "cache",
        )
        assert Path(p).read_bytes() == data, name
    lfs = {s.rfilename: s.lfs for s in api.model_info("alice/x", files_metadata=True).siblings}
    assert lfs["big.bin"] is not None and lfs["big.bin"].size == len(files["big.bin"])
    assert _xorbs(local_hub, "alice"), "the upload did not go through Xet"


def _xorbs(hub, user: str) -> list[Path]:
    return [p for p in (hub.data_dir / "xet" / "xorbs" / user).rglob("*") if p.is_file()]


def test_each_chunk_compression_scheme_decodes():
    """None, LZ4, and LZ4 over bytes grouped by position mod 4 (hf_xet picks per chunk)."""
    import lz4.frame

    data = bytes(range(256)) * 3 + b"xyz"  # a length that is not a multiple of 4
    grouped = b"".join(data[k::4] for k in range(4))
    assert xet.decompress(data, 0, len(data)) == data
    assert xet.decompress(lz4.frame.compress(data), 1, len(data)) == data
    assert xet.decompress(lz4.frame.compress(grouped), 2, len(data)) == data
    with pytest.raises(Exception, match="not a valid LZ4 frame"):
        xet.decompress(b"garbage", 1, 7)


def test_token_route_answers_as_the_hub_and_never_with_the_hub_token(local_hub):
    HfApi(endpoint=local_hub.endpoint, token=local_hub.token).create_repo("alice/t")
    r = httpx.get(
        f"{local_hub.endpoint}/api/models/alice/t/xet-write-token/main",
        headers={"authorization": f"Bearer {local_hub.token}"},
    )
    body = r.json()
    assert body["casUrl"].startswith(local_hub.endpoint + "/xet-cas/")
    assert body["casUrl"].endswith("/alice")  # hf_xet's dedup cache is per URL: one per user
    assert r.headers["X-Xet-Access-Token"] == body["accessToken"]
    assert int(r.headers["X-Xet-Token-Expiration"]) == body["exp"]
    assert local_hub.token not in body["accessToken"]
    reader = httpx.get(
        f"{local_hub.endpoint}/api/models/alice/t/xet-write-token/main",
        headers={"authorization": f"Bearer {local_hub.read_token}"},
    )
    assert reader.status_code == 403


def test_cas_requests_need_a_token_for_that_repo_and_a_write_token_to_upload(local_hub):
    api = HfApi(endpoint=local_hub.endpoint, token=local_hub.token)
    api.create_repo("alice/a")
    api.create_repo("alice/b")
    read_a = _token(local_hub, "alice/a", local_hub.token, "read")
    read, cas = read_a["accessToken"], read_a["casUrl"] + "/v1"
    h = "ab" * 32
    assert httpx.post(f"{cas}/xorbs/default/{h}", content=b"").status_code == 401
    hub_token = {"authorization": f"Bearer {local_hub.token}"}
    assert httpx.post(f"{cas}/shards", content=b"x", headers=hub_token).status_code == 401
    r = httpx.post(f"{cas}/shards", content=b"x", headers={"authorization": f"Bearer {read}"})
    assert r.status_code == 403
    forged = read.replace("xet_", "xet_A", 1)
    r = httpx.post(f"{cas}/shards", content=b"x", headers={"authorization": f"Bearer {forged}"})
    assert r.status_code == 401
    write_a = _token(local_hub, "alice/a", local_hub.token)["accessToken"]
    chunk = b"data" * 10
    xorb_bytes = bytes([0]) + len(chunk).to_bytes(3, "little") + b"\x00"
    xorb_bytes += len(chunk).to_bytes(3, "little") + chunk
    auth_a = {"authorization": f"Bearer {write_a}"}
    assert httpx.post(f"{cas}/xorbs/default/{h}", content=xorb_bytes, headers=auth_a).json() == {
        "was_inserted": True
    }
    assert httpx.head(f"{cas}/xorbs/default/{h}", headers=auth_a).status_code == 200
    # Bob's token opens only his own CAS URL, whose store has none of alice's xorbs.
    api_bob = HfApi(endpoint=local_hub.endpoint, token="hf_bob_write")
    api_bob.create_repo("bob/c")
    bob = _token(local_hub, "bob/c", "hf_bob_write")
    auth_b = {"authorization": f"Bearer {bob['accessToken']}"}
    assert httpx.head(f"{cas}/xorbs/default/{h}", headers=auth_b).status_code == 403
    cas_b = bob["casUrl"] + "/v1"
    assert httpx.head(f"{cas_b}/xorbs/default/{h}", headers=auth_b).status_code == 404
    import hashlib

    sha = hashlib.sha256(chunk).hexdigest()
    shard = _shard(h, sha, len(chunk))
    r = httpx.post(f"{cas_b}/shards", content=shard, headers=auth_b)
    assert r.status_code == 400 and "not uploaded" in r.headers["X-Error-Message"]
    assert not (local_hub.data_dir / "repos/models/bob/c/lfs" / sha).exists()
    # The same shard from alice's token rebuilds the file and grants it to alice/a only.
    r = httpx.post(f"{cas}/shards", content=shard, headers=auth_a)
    assert r.status_code == 200, r.text
    assert (local_hub.data_dir / "repos/models/alice/a/lfs" / sha).is_file()
    assert not (local_hub.data_dir / "repos/models/alice/b/lfs" / sha).exists()


def test_a_shard_whose_sha256_does_not_match_its_data_is_refused(local_hub):
    HfApi(endpoint=local_hub.endpoint, token=local_hub.token).create_repo("alice/s")
    tok = _token(local_hub, "alice/s", local_hub.token)
    cas, auth = tok["casUrl"] + "/v1", {"authorization": f"Bearer {tok['accessToken']}"}
    chunk = b"payload!" * 100
    import lz4.frame

    packed = lz4.frame.compress(chunk)
    xorb_bytes = b"\x00" + len(packed).to_bytes(3, "little") + b"\x01"
    xorb_bytes += len(chunk).to_bytes(3, "little") + packed
    h = "cd" * 32
    assert (
        httpx.post(f"{cas}/xorbs/default/{h}", content=xorb_bytes, headers=auth).status_code == 200
    )
    wrong = "00" * 32
    r = httpx.post(f"{cas}/shards", content=_shard(h, wrong, len(chunk)), headers=auth)
    assert r.status_code == 400 and "does not match" in r.headers["X-Error-Message"]
    assert not (local_hub.data_dir / "repos/models/alice/s/lfs" / wrong).exists()
    for junk in (b"", b"not a shard" * 10, _shard(h, wrong, len(chunk))[:-60]):
        r = httpx.post(f"{cas}/shards", content=junk, headers=auth)
        assert r.status_code == 400 and "\n" not in r.headers["X-Error-Message"]
    r = httpx.post(f"{cas}/xorbs/default/{h}", content=b"\x07" * 20, headers=auth)
    assert r.status_code == 400


def test_hf_upload_cli_with_only_endpoint_and_token(local_hub, tmp_path):
    HfApi(endpoint=local_hub.endpoint, token=local_hub.token).create_repo("alice/cli")
    folder, files = _folder(tmp_path)
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path / "home"),
        "HF_ENDPOINT": local_hub.endpoint,
        "HF_TOKEN": local_hub.token,
    }
    hf = Path(sys.executable).with_name("hf")
    out = subprocess.run(
        [str(hf), "upload", "alice/cli", str(folder), "."],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert _xorbs(local_hub, "alice"), "the upload did not go through Xet"
    api = HfApi(endpoint=local_hub.endpoint, token=local_hub.token)
    assert set(files) <= set(api.list_repo_files("alice/cli"))
    p = hf_hub_download(
        "alice/cli",
        "big.bin",
        endpoint=local_hub.endpoint,
        token=local_hub.token,
        cache_dir=tmp_path / "cache",
    )
    assert Path(p).read_bytes() == files["big.bin"]


def _shard_hash_bytes(hex64: str) -> bytes:
    """The inverse of xet.hash_hex."""
    return b"".join(bytes.fromhex(hex64[i : i + 16])[::-1] for i in range(0, 64, 16))


def _shard(xorb_hex: str, sha_hex: str, nbytes: int) -> bytes:
    """A minimal shard as hf_xet uploads one: header (footer size 0), one file (one segment:
    chunk 0 of the xorb, plus its sha256), the bookend, then the xorb-info section's bookend."""
    header = xet._SHARD_TAG + struct.pack("<QQ", 2, 0)
    file_header = b"\x11" * 32 + struct.pack("<IIQ", 1 << 30, 1, 0)
    entry = _shard_hash_bytes(xorb_hex) + struct.pack("<IIII", 0, nbytes, 0, 1)
    ext = _shard_hash_bytes(sha_hex) + bytes(16)
    bookend = b"\xff" * 32 + bytes(16)
    return header + file_header + entry + ext + bookend + bookend


def test_uploads_the_client_cache_has_seen_still_work_for_another_user_or_data_folder(
    xet_on, tmp_path
):
    """hf_xet skips xorbs its local cache says the CAS has: with one CAS URL per data folder and
    user, neither a second user on the same machine nor a fresh server on the same port is told
    'already there' about xorbs its store lacks."""
    import socket

    from hub_merge.localhub import LocalHub

    folder, files = _folder(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tokens = {"ta": ("alice", "write"), "tb": ("bob", "write")}
    for data, pairs in (
        ("d1", (("ta", "alice/x"), ("ta", "alice/y"), ("tb", "bob/z"))),
        ("d2", (("ta", "alice/x"),)),
    ):
        with LocalHub(tmp_path / data, port=port, tokens=tokens) as hub:
            for tok, repo in pairs:
                api = HfApi(endpoint=hub.endpoint, token=tok)
                api.create_repo(repo)
                api.upload_folder(folder_path=folder, repo_id=repo)
                p = hf_hub_download(
                    repo,
                    "big.bin",
                    endpoint=hub.endpoint,
                    token=tok,
                    cache_dir=tmp_path / f"c{data}",
                )
                assert Path(p).read_bytes() == files["big.bin"]


def test_xet_tokens_expire_and_cannot_be_altered():
    from hub_merge.localhub.storage import StorageError
    from hub_merge.localhub.validation import RepoRef

    repo = RepoRef("model", "alice", "m")
    tokens = xet.XetTokens()
    tok, _ = tokens.issue("alice", repo, "write")
    assert tokens.check(f"Bearer {tok}", write=True) == ("alice", repo)
    body, mac = tok.split(".")
    for wrong in (
        xet.XetTokens().issue("alice", repo, "write")[0],  # another server's key
        xet.XetTokens(ttl=-1).issue("alice", repo, "write")[0],  # expired (other key too)
        body + "." + "0" * len(mac),
        "xet_bm90fGFueXRoaW5n.00",
        "",
    ):
        with pytest.raises(StorageError) as err:
            tokens.check(f"Bearer {wrong}", write=False)
        assert err.value.status == 401
    expired = xet.XetTokens(ttl=-1)
    with pytest.raises(StorageError, match="expired"):
        expired.check(f"Bearer {expired.issue('alice', repo, 'read')[0]}", write=False)
