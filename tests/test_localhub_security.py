"""The local Hub against a hostile user, over raw HTTP (the real client refuses bad ids itself).

Three users (alice and bob write, carol reads) and anonymous callers attack bob's repos through
every route that takes a repo id, with every encoding of a separator we know of. Each attack must
get a 4xx (never a 200, a 5xx or a dropped connection) and leave bob's repos byte for byte as
they were.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from huggingface_hub import HfApi

from hub_merge.localhub import LocalHub

TOKENS = {
    "hf_alice": ("alice", "write"),
    "hf_bob": ("bob", "write"),
    "hf_carol": ("carol", "read"),
}
CALLERS = ("hf_alice", "hf_bob", "hf_carol", None)
SECRET = b"bob's private weights " + os.urandom(16).hex().encode()
SECRET_OID = hashlib.sha256(SECRET).hexdigest()
OID = "c" * 64

# Segments that must never be taken for a repo name (or a namespace): each is sent as is.
HOSTILE_NAMES = [
    "..%2Fbob%2Fsecret",  # encoded separator
    "..%2fbob%2fsecret",
    "%2E%2E%2Fbob%2Fsecret",  # encoded dots and separator
    "%2e%2e%2fbob%2fsecret",
    "..%252Fbob%252Fsecret",  # double encoding
    "%252E%252E%252Fbob%252Fsecret",
    "..%5Cbob%5Csecret",  # backslash
    "%C0%AE%C0%AE%C0%AFbob%C0%AFsecret",  # overlong UTF-8 for '.' and '/'
    "%EF%BC%8Fbob%EF%BC%8Fsecret",  # fullwidth solidus
    "caf%C3%A9",  # non-ASCII
    "%E2%80%A5%2Fbob%2Fsecret",  # two-dot leader
    "a" * 300,  # overlong
    "secret%00",  # NUL
    "%00",
    "secret%0D%0AX-Injected:%201",  # CR LF into headers
    "secret%09",
    "%FF%FE",  # invalid UTF-8
    "..",
    ".",
    "%2E%2E",
    "%2E",
    "secret--x",
    "-secret",
    "secret.git",
]
HOSTILE_IDS = (
    [f"alice/{n}" for n in HOSTILE_NAMES]
    + [f"{n}/secret" for n in HOSTILE_NAMES]
    + ["alice%2F..%2Fbob/secret", "alice/../bob/secret", "alice/..", "../bob/secret"]
    + ["api/secret", "datasets/secret"]
)


def _ndjson(path: str, data: bytes) -> bytes:
    lines = [
        {"key": "header", "value": {"summary": "attack"}},
        {
            "key": "file",
            "value": {
                "path": path,
                "content": base64.b64encode(data).decode(),
                "encoding": "base64",
            },
        },
    ]
    return b"".join(json.dumps(x).encode() + b"\n" for x in lines)


def _repo_routes(repo: str) -> list[tuple[str, str, bytes | None]]:
    """(method, raw target, body) for every route that takes a repo id."""
    j = lambda obj: json.dumps(obj).encode()  # noqa: E731
    api = f"/api/models/{repo}"
    return [
        ("GET", api, None),
        ("GET", f"{api}/revision/main", None),
        ("GET", f"{api}/tree/main", None),
        ("GET", f"{api}/tree/main/sub%2Fdir?recursive=true", None),
        ("GET", f"{api}/refs", None),
        ("GET", f"{api}/commits/main", None),
        ("GET", f"/{repo}/resolve/main/secret.txt", None),
        ("HEAD", f"/{repo}/resolve/main/secret.txt", None),
        ("GET", f"/datasets/{repo}/resolve/main/secret.txt", None),
        ("GET", f"/api/datasets/{repo}", None),
        ("POST", f"{api}/preupload/main", j({"files": [{"path": "x", "sample": "", "size": 1}]})),
        ("POST", f"{api}/commit/main", _ndjson("pwned.txt", b"pwned")),
        ("POST", f"{api}/branch/evil", j({})),
        ("DELETE", f"{api}/branch/dev", None),
        ("POST", f"{api}/tag/main", j({"tag": "evil"})),
        ("DELETE", f"{api}/tag/v1", None),
        ("PUT", f"{api}/settings", j({"private": False})),
        ("POST", f"/{repo}.git/info/lfs/objects/batch", _batch_body(SECRET_OID, len(SECRET))),
        ("PUT", f"/lfs-upload/model/{repo}/{OID}?size=3&exp=9999999999&sig=00", b"abc"),
    ]


def _batch_body(oid: str, size: int) -> bytes:
    return json.dumps({"operation": "upload", "objects": [{"oid": oid, "size": size}]}).encode()


class Raw:
    """HTTP with the request target sent byte for byte (httpx would normalise dots)."""

    def __init__(self, endpoint: str) -> None:
        self.netloc = urlsplit(endpoint).netloc

    def __call__(
        self, method: str, target: str, token: str | None = None, body: bytes | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(self.netloc, timeout=30)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, target, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()


def _snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` with a hash of its bytes."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def hub(tmp_path):
    data = tmp_path / "hub"
    with LocalHub(data, tokens=TOKENS) as server:
        bob = HfApi(endpoint=server.endpoint, token="hf_bob")
        for name, private in (("secret", True), ("pub", False)):
            bob.create_repo(f"bob/{name}", private=private)
            bob.upload_file(
                path_or_fileobj=SECRET, path_in_repo="secret.txt", repo_id=f"bob/{name}"
            )
            bob.upload_file(
                path_or_fileobj=SECRET, path_in_repo="w.safetensors", repo_id=f"bob/{name}"
            )
            bob.create_branch(f"bob/{name}", branch="dev")
            bob.create_tag(f"bob/{name}", tag="v1")
        HfApi(endpoint=server.endpoint, token="hf_alice").create_repo("alice/own")
        yield server, Raw(server.endpoint), data


def _victim(data: Path) -> dict[str, str]:
    return _snapshot(data / "repos" / "models" / "bob")


def _refused(status: int, headers: dict[str, str], body: bytes, what: str) -> None:
    assert 400 <= status < 500, f"{what}: answered {status}"
    assert SECRET not in body, f"{what}: leaked bob's bytes"
    for k, v in headers.items():
        assert v.isascii() and v.isprintable(), f"{what}: header {k}={v!r}"
    assert "x-injected" not in {k.lower() for k in headers}, what


def test_every_route_refuses_every_hostile_id(hub):
    server, raw, data = hub
    before = _victim(data)
    for repo in HOSTILE_IDS:
        for method, target, body in _repo_routes(repo):
            for token in CALLERS:
                status, headers, out = raw(method, target, token, body)
                _refused(status, headers, out, f"{method} {target} as {token}")
    # Plain ids: only bob may change bob's repos, and only he sees the private one.
    for repo in ("bob/secret", "bob/pub"):
        for method, target, body in _repo_routes(repo):
            for token in ("hf_alice", "hf_carol", None):
                if method in ("GET", "HEAD") and repo == "bob/pub":
                    continue  # public: reading is allowed
                status, headers, out = raw(method, target, token, body)
                _refused(status, headers, out, f"{method} {target} as {token}")
                if method in ("GET", "HEAD"):
                    assert status == 404, f"{target} as {token} must not reveal the repo"
    assert _victim(data) == before
    assert sorted(p.name for p in (data / "repos" / "models").iterdir()) == ["alice", "bob"]
    # The rights check is what refused the writes: bob himself may do the same.
    status, _, _ = raw("PUT", "/api/models/bob/pub/settings", "hf_bob", b'{"private": true}')
    assert status == 200


def test_delete_and_create_take_the_namespace_from_the_validated_id(hub):
    server, raw, data = hub
    before = _victim(data)
    bodies = [
        {"name": "../bob/pub"},
        {"name": "..%2Fbob%2Fpub"},
        {"name": "secret", "organization": "bob"},
        {"name": "pub", "organization": "alice/../bob"},
        {"name": "pub", "organization": "../bob"},
        {"name": "bob/pub"},
        {"name": "pub\u0000", "organization": "bob"},
        {"name": "p" * 300},
        {"name": "pub", "organization": "bob", "type": "../model"},
    ]
    for body in bodies:
        for token in CALLERS:
            for method, target in (("DELETE", "/api/repos/delete"), ("POST", "/api/repos/create")):
                if token == "hf_bob" and body == {"name": "secret", "organization": "bob"}:
                    continue  # bob may delete or create his own repos
                status, headers, out = raw(method, target, token, json.dumps(body).encode())
                _refused(status, headers, out, f"{method} {body} as {token}")
    assert _victim(data) == before
    api = HfApi(endpoint=server.endpoint, token="hf_bob")
    assert api.model_info("bob/pub").sha and api.model_info("bob/secret").private


def test_a_commit_cannot_claim_another_repos_blob(hub):
    server, raw, data = hub
    alice = HfApi(endpoint=server.endpoint, token="hf_alice")
    head = alice.model_info("alice/own").sha
    lfs = {
        "key": "lfsFile",
        "value": {"path": "stolen.bin", "algo": "sha256", "oid": SECRET_OID, "size": len(SECRET)},
    }
    body = json.dumps({"key": "header", "value": {"summary": "s"}}) + "\n" + json.dumps(lfs)
    status, _, _ = raw("POST", "/api/models/alice/own/commit/main", "hf_alice", body.encode())
    assert status == 400
    assert alice.model_info("alice/own").sha == head
    status, _, out = raw("GET", "/alice/own/resolve/main/stolen.bin", "hf_alice")
    assert status == 404 and SECRET not in out
    # The batch API does not tell alice that the blob exists: it asks her to upload it...
    status, _, out = raw(
        "POST", "/alice/own.git/info/lfs/objects/batch", "hf_alice", _batch_body(SECRET_OID, 10**3)
    )
    assert status == 200 and "actions" in json.loads(out)["objects"][0]
    status, _, out = raw(
        "POST",
        "/alice/own.git/info/lfs/objects/batch",
        "hf_alice",
        _batch_body(SECRET_OID, len(SECRET)),
    )
    href = json.loads(out)["objects"][0]["actions"]["upload"]["href"]
    # ...and only the right bytes earn her repo the object; the disk keeps one copy.
    target = href[len(server.endpoint) :]
    assert raw("PUT", target, None, b"x" * len(SECRET))[0] == 400
    assert raw("PUT", target, None, SECRET)[0] == 200
    assert raw("POST", "/api/models/alice/own/commit/main", "hf_alice", body.encode())[0] == 200
    assert len(list((data / "blobs").rglob(SECRET_OID))) == 1
    # bob still has it, and his repo's uploads are not asked again.
    status, _, out = raw(
        "POST",
        "/bob/pub.git/info/lfs/objects/batch",
        "hf_bob",
        _batch_body(SECRET_OID, len(SECRET)),
    )
    assert "actions" not in json.loads(out)["objects"][0]


def test_reads_never_write(hub):
    server, raw, data = hub
    before = _snapshot(data)
    for repo in ("bob/pub", "bob/secret", "alice/own", "alice/missing"):
        for method, target, _ in _repo_routes(repo):
            if method in ("GET", "HEAD"):
                for token in CALLERS:
                    raw(method, target, token)
    for target in ("/api/models", "/api/models?full=true&author=bob", "/api/whoami-v2"):
        for token in CALLERS:
            raw("GET", target, token)
    assert _snapshot(data) == before


def test_validate_yaml_has_a_size_cap(hub):
    server, raw, data = hub
    big = json.dumps({"content": "---\ntags: [" + "x, " * 2_000_000 + "]\n---\n"}).encode()
    status, headers, _ = raw("POST", "/api/validate-yaml", None, big)
    assert status == 413
    ok = json.dumps({"content": "---\nlicense: mit\n---\n"}).encode()
    assert raw("POST", "/api/validate-yaml", None, ok)[0] == 200


# --- sha pins -----------------------------------------------------------------------------------


def _pinned_bytes(server, raw, repo: str, sha: str, token: str | None) -> bytes:
    """The file at ``sha`` through every read the client uses; all must agree."""
    status, headers, body = raw("GET", f"/{repo}/resolve/{sha}/w.txt", token)
    assert status == 200 and headers["x-repo-commit"] == sha
    api = HfApi(endpoint=server.endpoint, token=token)
    assert api.model_info(repo, revision=sha).sha == sha
    files = {f.path: f for f in api.list_repo_tree(repo, revision=sha) if hasattr(f, "size")}
    assert files["w.txt"].size == len(body)
    return body


def test_a_sha_pin_cannot_be_re_pointed(hub):
    """A 40-hex revision is a commit and only a commit: no branch, tag, PR or commit moves it."""
    from huggingface_hub import CommitOperationAdd
    from huggingface_hub.errors import HfHubHTTPError

    server, raw, data = hub
    bob = HfApi(endpoint=server.endpoint, token="hf_bob")
    repo = "bob/pub"
    old = bob.upload_file(path_or_fileobj=b"pinned v1", path_in_repo="w.txt", repo_id=repo).oid
    bob.upload_file(path_or_fileobj=b"moved on v2", path_in_repo="w.txt", repo_id=repo)
    assert _pinned_bytes(server, raw, repo, old, None) == b"pinned v1"
    names = [old, old.upper(), old[:7], old[:12], old[:39], f"refs/heads/{old}", f"x/../{old}"]
    attempts = []
    for name in names:
        attempts += [
            lambda n=name: bob.create_branch(repo, branch=n),
            lambda n=name: bob.create_branch(repo, branch=n, revision="main"),
            lambda n=name: bob.create_tag(repo, tag=n),
            lambda n=name: bob.create_tag(repo, tag=n, revision="main"),
            lambda n=name: bob.delete_branch(repo, branch=n),
            lambda n=name: bob.delete_tag(repo, tag=n),
        ]
    add = [CommitOperationAdd("w.txt", b"forged")]
    attempts += [
        lambda: bob.create_commit(repo, add, commit_message="x", revision=old),
        lambda: bob.create_commit(repo, add, commit_message="x", revision=old, create_pr=True),
        lambda: bob.create_commit(repo, add, commit_message="x", revision="v1", create_pr=True),
        lambda: bob.create_commit(repo, add, commit_message="x", revision=old.upper()),
        lambda: bob.create_commit(repo, add, commit_message="x", revision=f"refs/heads/{old}"),
    ]
    for attempt in attempts:
        with pytest.raises(HfHubHTTPError) as err:
            attempt()
        assert 400 <= err.value.response.status_code < 500, err.value
        assert _pinned_bytes(server, raw, repo, old, None) == b"pinned v1"
    # Raw requests, past the client's own checks: the same refusals.
    for name in (old, old[:8], old.upper()):
        target = f"/api/models/{repo}/branch/{name}"
        assert raw("POST", target, "hf_bob", b"{}")[0] == 400
        body = json.dumps({"tag": name}).encode()
        assert raw("POST", f"/api/models/{repo}/tag/main", "hf_bob", body)[0] == 400
    assert _pinned_bytes(server, raw, repo, old, "hf_bob") == b"pinned v1"
    refs = bob.list_repo_refs(repo)
    assert {b.name for b in refs.branches} == {"main", "dev"}
    assert {t.name for t in refs.tags} == {"v1"}
    # A short sha the server resolves is the commit's, and a branch with a sha-free name works.
    assert bob.model_info(repo, revision=old[:7]).sha == old
    bob.create_branch(repo, branch="release-1", revision=old)
    assert bob.model_info(repo, revision="release-1").sha == old
