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
                if ".git/info/lfs" in target and repo == "bob/pub" and token == "hf_alice":
                    continue  # a contributor may upload LFS objects for a pull request
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
    status, headers, out = raw("POST", "/api/validate-yaml", None, big)
    assert status == 400 and "1 MiB" in json.loads(out)["errors"][0]["message"]
    huge = json.dumps({"content": "x" * (9 * 1024 * 1024)}).encode()
    assert raw("POST", "/api/validate-yaml", None, huge)[0] == 413
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


# --- bounded work: a real server process, its peak memory read from /proc ---------------------

ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)
)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """``hub-merge hub serve`` in its own process (bob writes), with bob/pub holding SECRET."""
    import subprocess
    import sys

    data = tmp_path_factory.mktemp("served") / "hub"
    env = {**os.environ, "HUB_MERGE_HUB_TOKENS": "bob:hf_bob:write,alice:hf_alice:write"}
    cmd = [sys.executable, "-m", "hub_merge", "hub", "serve", "--data", str(data)]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
    )
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://"), "hub serve did not start"
        bob = HfApi(endpoint=url, token="hf_bob")
        bob.create_repo("bob/pub")
        bob.upload_file(path_or_fileobj=SECRET, path_in_repo="secret.txt", repo_id="bob/pub")
        bob.upload_file(
            path_or_fileobj=b"---\nlicense: mit\ntags: [ok]\n---\n# card\n",
            path_in_repo="README.md",
            repo_id="bob/pub",
        )
        yield proc, url, data
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _peak_rss_since_reset(pid: int) -> int:
    """The process's peak RSS (VmHWM, bytes) since the last reset; the reset starts a new one."""
    status = Path(f"/proc/{pid}/status").read_text()
    kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return kb * 1024


def _send(url: str, method: str, target: str, body: bytes, token: str | None = None) -> int:
    """Send a request over a raw socket and return the status, whether or not the server read
    the whole body (one refused early may close the socket while the body is still going)."""
    import socket

    host, port = urlsplit(url).netloc.split(":")
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    head = (
        f"{method} {target} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n"
        f"Content-Type: application/json\r\n{auth}Connection: close\r\n\r\n"
    )
    with socket.create_connection((host, int(port)), timeout=60) as s:
        s.sendall(head.encode())
        try:
            s.sendall(body)
        except OSError:
            pass  # refused before the body was read: the status is already on its way
        reply = b""
        while b"\r\n" not in reply:
            chunk = s.recv(65536)
            if not chunk:
                break
            reply += chunk
    return int(reply.split(b" ", 2)[1])


def _still_answers(url: str) -> None:
    """A normal request right after an attack is answered within a second."""
    import httpx

    r = httpx.get(f"{url}/api/models/bob/pub", timeout=1.0)
    assert r.status_code == 200 and r.json()["cardData"] == {"license": "mit", "tags": ["ok"]}


def _bob_unchanged(url: str, sha: str) -> None:
    api = HfApi(endpoint=url)
    assert api.model_info("bob/pub").sha == sha
    assert sorted(api.list_repo_files("bob/pub")) == [".gitattributes", "README.md", "secret.txt"]


MIB = 1024 * 1024
BOUNDED_ATTACKS = [
    # (name, method, target, body, token, expected status)
    ("16 MB of [] lists, anonymous", "POST", "/api/repos/create", b"[],"*(8 * MIB) + b"[]", None, 401),
    ("16 MB of [] lists, signed in", "POST", "/api/repos/create", b"[],"*(8 * MIB) + b"[]", "hf_alice", 413),
    ("deep JSON, anonymous create", "POST", "/api/repos/create", b"[" * 100_000, None, 401),
    ("deep JSON, signed-in create", "POST", "/api/repos/create", b"[" * 60_000, "hf_alice", 400),
    ("deep JSON, signed-in delete", "DELETE", "/api/repos/delete", b"[" * 60_000, "hf_alice", 400),
    ("deep JSON, validate-yaml", "POST", "/api/validate-yaml", b"[" * 100_000, None, 400),
    ("deep JSON in an object", "POST", "/api/validate-yaml", b'{"content": ' + b"[" * 5_000_000, None, 400),
    ("many values, validate-yaml", "POST", "/api/validate-yaml", b"[" + b"1," * (2 * MIB) + b"1]", None, 400),
    ("YAML alias bomb", "POST", "/api/validate-yaml", json.dumps({"content": f"---\n{ALIAS_BOMB}---\n"}).encode(), None, 400),
    ("deep YAML", "POST", "/api/validate-yaml", json.dumps({"content": "---\nx: " + "[" * 500_000 + "\n---\n"}).encode(), None, 400),
    ("deep JSON, preupload", "POST", "/api/models/bob/pub/preupload/main", b"[" * 100_000, "hf_alice", 403),
    ("deep JSON, own preupload", "POST", "/api/models/alice/own/preupload/main", b"[" * 100_000, "hf_alice", 400),
    ("deep JSON, LFS batch", "POST", "/alice/own.git/info/lfs/objects/batch", b"{" * 100_000, "hf_alice", 400),
    ("deep JSON, branch", "POST", "/api/models/alice/own/branch/x", b"[" * 100_000, "hf_alice", 413),
    ("deep ndjson line, commit", "POST", "/api/models/alice/own/commit/main", b"[" * 100_000, "hf_alice", 400),
]  # fmt: skip


@pytest.mark.parametrize("attack", BOUNDED_ATTACKS, ids=[a[0] for a in BOUNDED_ATTACKS])
def test_bounded_work_for_hostile_bodies(served, attack):
    """Each body is refused (4xx, never a 500 or a dropped connection), the server's peak memory
    grows by less than 64 MiB over a 16 MB body, and it answers the next request at once."""
    proc, url, _ = served
    name, method, target, body, token, expected = attack
    if not HfApi(endpoint=url, token="hf_alice").repo_exists("alice/own"):
        HfApi(endpoint=url, token="hf_alice").create_repo("alice/own")
    sha = HfApi(endpoint=url).model_info("bob/pub").sha
    _peak_rss_since_reset(proc.pid)
    before = _peak_rss_since_reset(proc.pid)
    assert _send(url, method, target, body, token) == expected, name
    assert _peak_rss_since_reset(proc.pid) - before < 64 * MIB, name
    _still_answers(url)
    _bob_unchanged(url, sha)


def _readme_commit(readme: bytes) -> bytes:
    return _ndjson("README.md", readme)


def test_cards_are_checked_bounded_and_parsed_once(hub, monkeypatch):
    """README metadata is refused when it holds aliases or over 1 MiB, whether committed as a
    regular file or as LFS; what is accepted is parsed at commit time and never again."""
    from huggingface_hub import CommitOperationAdd

    server, raw, data = hub
    bob = HfApi(endpoint=server.endpoint, token="hf_bob")
    bob.upload_file(
        path_or_fileobj=b"---\nlicense: mit\nlibrary_name: peft\n---\n", path_in_repo="README.md",
        repo_id="bob/pub",
    )  # fmt: skip
    before, sha = _victim(data), bob.model_info("bob/pub").sha
    bomb = f"---\nlicense: mit\nwidget:\n{ALIAS_BOMB.replace(chr(10), chr(10) + '  ')}\n---\n"
    big = (
        "---\nlicense: mit\ntags:\n"
        + "  - tag-of-forty-characters-xxxxxxxxxxxx\n" * 70_000
        + "---\n"
    )
    bad_license = "---\nlicense: not-a-license\n---\n"
    for readme in (bomb, big, bad_license):
        body = _readme_commit(readme.encode())
        status, headers, out = raw("POST", "/api/models/bob/pub/commit/main", "hf_bob", body)
        _refused(status, headers, out, readme[:40])
        assert status == 400 and b"README.md" in out
        # The same bytes as an LFS object (uploaded through the batch API) are refused too.
        oid = hashlib.sha256(readme.encode()).hexdigest()
        status, _, out = raw(
            "POST", "/bob/pub.git/info/lfs/objects/batch", "hf_bob", _batch_body(oid, len(readme))
        )
        href = json.loads(out)["objects"][0].get("actions", {}).get("upload", {}).get("href")
        if href:
            assert raw("PUT", href[len(server.endpoint) :], None, readme.encode())[0] == 200
        lfs = {
            "key": "lfsFile",
            "value": {"path": "README.md", "algo": "sha256", "oid": oid, "size": len(readme)},
        }
        body = (
            json.dumps({"key": "header", "value": {"summary": "s"}}) + "\n" + json.dumps(lfs)
        ).encode()
        status, headers, out = raw("POST", "/api/models/bob/pub/commit/main", "hf_bob", body)
        _refused(status, headers, out, "LFS " + readme[:40])
        assert status == 400 and b"README.md" in out
    assert bob.model_info("bob/pub").sha == sha
    after = _victim(data)
    assert {k: v for k, v in after.items() if "/lfs/" not in k} == {
        k: v for k, v in before.items() if "/lfs/" not in k
    }  # only the upload ledger grew (bob uploaded those objects)
    # Reads serve the metadata kept at commit time: no card is parsed on a read.
    import hub_merge.localhub.routes_read as routes_read

    def no_parse(*args, **kwargs):
        raise AssertionError("a card was parsed on a read")

    monkeypatch.setattr(routes_read, "parse_front_matter", no_parse)
    anon = HfApi(endpoint=server.endpoint, token=False)
    assert anon.model_info("bob/pub").card_data.to_dict() == {
        "license": "mit",
        "library_name": "peft",
    }
    listed = {m.id: m for m in anon.list_models(author="bob", full=True, cardData=True)}
    assert listed["bob/pub"].card_data.to_dict()["license"] == "mit"
    assert "license:mit" in listed["bob/pub"].tags
    # A card committed as LFS is read the same way, and a later commit keeps it.
    card = b"---\nlicense: apache-2.0\nbase_model: bob/pub\n---\n"
    bob.create_commit(
        "bob/pub", [CommitOperationAdd("README.md", card)], commit_message="card",
    )  # fmt: skip
    bob.upload_file(path_or_fileobj=b"x", path_in_repo="other.txt", repo_id="bob/pub")
    assert anon.model_info("bob/pub").card_data.to_dict()["license"] == "apache-2.0"
    assert {m.id for m in anon.list_models(filter="base_model:finetune:bob/pub")} == {"bob/pub"}


@pytest.mark.parametrize(
    "target",
    [
        "/api/models/alice/" + "x" * 180 + "%20" * 40,
        "/api/models/" + "x" * 180 + "%20" * 40 + "/y",
        "/api/models/alice/own/tree/" + "%20" * 300,
        "/alice/own/resolve/main/" + "x" * 180 + "%20" * 40,
        "/api/models/alice/own/revision/" + "x" * 190 + "%09" * 40,
        "/api/models/alice/" + "%E2%80%AE" * 80,
    ],
)
def test_every_header_is_ascii_trimmed_and_bounded(hub, target):
    """An over-long name ending in spaces used to drop the connection (h11 refuses a header
    value with trailing whitespace); now a 4xx with clean headers, for anyone."""
    server, raw, data = hub
    for token in CALLERS:
        status, headers, out = raw("GET", target, token)
        _refused(status, headers, out, target)
        for k, v in headers.items():
            assert v == v.strip() and len(v) <= 1024, (k, v)


def test_a_refused_readme_commit_answers_with_clean_headers(hub):
    server, raw, data = hub
    before = _victim(data)
    readme = "---\nlicense: " + "x" * 180 + " " * 40 + "\ntags: [" + "\u202e" * 50 + "]\n---\n"
    body = _readme_commit(readme.encode())
    status, headers, out = raw("POST", "/api/models/bob/pub/commit/main", "hf_bob", body)
    _refused(status, headers, out, "README commit")
    assert status == 400 and headers["x-error-message"] == headers["x-error-message"].strip()
    assert _victim(data) == before


def test_a_commit_of_many_regular_files_the_hub_accepts(served, tmp_path):
    """12 regular files of 9 MB each (the Hub takes them in one commit) are not a 413, and the
    server reads them line by line: its peak memory grows by far less than the 144 MB body."""
    from huggingface_hub import CommitOperationAdd

    proc, url, _ = served
    bob = HfApi(endpoint=url, token="hf_bob")
    bob.create_repo("bob/many", exist_ok=True)
    files = {f"part-{i}.txt": (b"%02d" % i) * (9 * MIB // 2) for i in range(12)}
    _peak_rss_since_reset(proc.pid)
    before = _peak_rss_since_reset(proc.pid)
    bob.create_commit(
        "bob/many", [CommitOperationAdd(p, d) for p, d in files.items()], commit_message="m"
    )
    assert _peak_rss_since_reset(proc.pid) - before < 100 * MIB
    info = {f.path: f for f in bob.list_repo_tree("bob/many") if f.path in files}
    assert {p: (f.size, f.lfs) for p, f in info.items()} == {p: (9 * MIB, None) for p in files}
    got = bob.hf_hub_download("bob/many", "part-11.txt", cache_dir=str(tmp_path))
    assert Path(got).read_bytes() == files["part-11.txt"]


# --- paths as huggingface_hub's rules have them ------------------------------------------------

HOSTILE_PATHS = [
    "sub/.git/config",
    ".git/config",
    ".cache/huggingface/download/x.metadata",
    "a/.cache/huggingface/x",
    "x\u0085y.txt",  # C1 control (next line)
    "x\u2028y.txt",  # line separator
    "x\u2029y.txt",  # paragraph separator
    "evil\u202etxt.exe",  # right-to-left override
    "zero\u200bwidth.txt",
    "bom\ufeff.txt",
    "del\x7f.txt",
    "tab\t.txt",
    "a/../b.txt",
    "./a.txt",
    "a//b.txt",
    "/abs.txt",
    "back\\slash.txt",
]


def test_paths_the_client_forbids_are_refused(hub, tmp_path):
    """Each hostile path, in a raw commit to alice's own repo: a 400, and nothing committed; a
    download of the repo to a local folder still works."""
    from huggingface_hub import snapshot_download

    server, raw, data = hub
    alice = HfApi(endpoint=server.endpoint, token="hf_alice")
    alice.upload_file(path_or_fileobj=b"ok", path_in_repo="keep.txt", repo_id="alice/own")
    head, before = alice.model_info("alice/own").sha, _victim(data)
    for path in HOSTILE_PATHS:
        body = _ndjson(path, b"pwned")
        status, headers, out = raw("POST", "/api/models/alice/own/commit/main", "hf_alice", body)
        _refused(status, headers, out, repr(path))
        assert status == 422, path  # the Hub's status for a path it refuses
        preupload = json.dumps({"files": [{"path": path, "sample": "", "size": 1}]}).encode()
        status, _, _ = raw("POST", "/api/models/alice/own/preupload/main", "hf_alice", preupload)
        assert status == 422, path
    assert alice.model_info("alice/own").sha == head and _victim(data) == before
    folder = snapshot_download(
        "alice/own", endpoint=server.endpoint, token="hf_alice", local_dir=tmp_path / "d"
    )
    assert sorted(p.name for p in Path(folder).iterdir() if p.is_file()) == [
        ".gitattributes",
        "keep.txt",
    ]


def test_a_path_cannot_be_both_a_file_and_a_folder(hub, tmp_path):
    """``x`` and ``x/y`` in one commit, or in two, would make the repo undownloadable."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    server, raw, data = hub
    alice = HfApi(endpoint=server.endpoint, token="hf_alice")
    alice.create_commit(
        "alice/own",
        [CommitOperationAdd("x", b"file x"), CommitOperationAdd("d/y", b"file d/y")],
        commit_message="base",
    )
    head = alice.model_info("alice/own").sha
    clashes = [
        [CommitOperationAdd("p", b"1"), CommitOperationAdd("p/q", b"2")],  # in one commit
        [CommitOperationAdd("p/q/r", b"1"), CommitOperationAdd("p/q", b"2")],
        [CommitOperationAdd("x/y", b"under the file x")],  # against the tree
        [CommitOperationAdd("d", b"over the folder d")],
        [CommitOperationAdd("d/y/z", b"under the file d/y")],
    ]
    for ops in clashes:
        with pytest.raises(HfHubHTTPError) as err:
            alice.create_commit("alice/own", ops, commit_message="clash")
        assert err.value.response.status_code == 400
        assert alice.model_info("alice/own").sha == head
    # Replacing a file by a folder in one commit is fine: the file goes, the folder comes.
    alice.create_commit(
        "alice/own",
        [CommitOperationDelete("x"), CommitOperationAdd("x/y", b"now a folder")],
        commit_message="file to folder",
    )
    # A folder is deleted by name, with or without its trailing '/'.
    alice.create_commit("alice/own", [CommitOperationDelete("d")], commit_message="rm d")
    alice.create_commit("alice/own", [CommitOperationDelete("x/")], commit_message="rm x/")
    assert sorted(alice.list_repo_files("alice/own")) == [".gitattributes"]
    snapshot_download("alice/own", endpoint=server.endpoint, token="hf_alice", local_dir=tmp_path)


# --- repos move, duplicate and list: ownership ---------------------------------------------------


def test_move_duplicate_and_list_respect_ownership(hub):
    """Only the owner moves a repo, only within their namespace; a duplicate needs read access
    to the source and lands only in the caller's namespace; the list shows one's own repos."""
    server, raw, data = hub
    before = _victim(data)
    j = lambda obj: json.dumps(obj).encode()  # noqa: E731
    moves = [
        {"fromRepo": "bob/pub", "toRepo": "alice/stolen"},
        {"fromRepo": "bob/secret", "toRepo": "alice/stolen"},
        {"fromRepo": "bob/pub", "toRepo": "bob/renamed"},
        {"fromRepo": "alice/own", "toRepo": "bob/pub"},
        {"fromRepo": "alice/own", "toRepo": "bob/new"},
        {"fromRepo": "alice/own", "toRepo": "../bob/x"},
        {"fromRepo": "alice/../bob/pub", "toRepo": "alice/x"},
        {"fromRepo": "alice/own", "toRepo": "alice/own"},
        {"fromRepo": "alice/own", "toRepo": "alice/" + "x" * 200},
    ]
    for body in moves:
        for token in ("hf_alice", "hf_carol", None):
            status, headers, out = raw("POST", "/api/repos/move", token, j(body))
            _refused(status, headers, out, f"move {body} as {token}")
    dups = [
        ("bob/secret", {"repository": "alice/copy"}),  # private: alice cannot read it
        ("bob/pub", {"repository": "bob/copy"}),  # into someone else's namespace
        ("bob/pub", {"repository": "bob/secret"}),
        ("bob/pub", {"repository": "../x"}),
    ]
    for src, body in dups:
        for token in ("hf_alice", "hf_carol", None):
            status, headers, out = raw("POST", f"/api/models/{src}/duplicate", token, j(body))
            _refused(status, headers, out, f"duplicate {src} {body} as {token}")
    assert raw("GET", "/api/settings/repositories", None)[0] == 401
    assert _victim(data) == before
    # What is allowed: a copy of a public repo into one's own namespace, and one's own list.
    body = j({"repository": "alice/copy-of-pub"})
    assert raw("POST", "/api/models/bob/pub/duplicate", "hf_alice", body)[0] == 200
    status, _, out = raw("GET", "/api/settings/repositories", "hf_alice")
    assert status == 200 and {r["id"] for r in json.loads(out)} == {
        "alice/own",
        "alice/copy-of-pub",
    }
    assert _victim(data) == before


def test_a_contributor_opens_a_pull_request_and_changes_nothing_else(hub):
    """As on the Hub, anyone with a write token may open a PR on a public repo (LFS files
    included); only the PR ref is new. A read token, a private repo or a commit to a branch
    are still refused."""
    from huggingface_hub import CommitOperationAdd
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    server, raw, data = hub
    alice = HfApi(endpoint=server.endpoint, token="hf_alice")
    bob = HfApi(endpoint=server.endpoint, token="hf_bob")
    main = bob.model_info("bob/pub").sha

    def ops():
        return [
            CommitOperationAdd("fix.txt", b"a fix"),
            CommitOperationAdd("w2.safetensors", b"\0" * 64),
        ]

    pr = alice.create_commit("bob/pub", ops(), commit_message="proposal", create_pr=True)
    assert pr.pr_num == 1
    assert bob.model_info("bob/pub").sha == main
    files = bob.list_repo_files("bob/pub", revision="refs/pr/1")
    assert {"fix.txt", "w2.safetensors", "secret.txt"} <= set(files)
    with pytest.raises(HfHubHTTPError) as err:
        alice.create_commit("bob/pub", ops(), commit_message="direct")
    assert err.value.response.status_code == 403
    carol = HfApi(endpoint=server.endpoint, token="hf_carol")
    with pytest.raises(HfHubHTTPError) as err:
        carol.create_commit("bob/pub", ops()[:1], commit_message="x", create_pr=True)
    assert err.value.response.status_code == 403
    with pytest.raises(RepositoryNotFoundError):
        alice.create_commit("bob/secret", ops()[:1], commit_message="x", create_pr=True)
    assert bob.model_info("bob/pub").sha == main
    assert {b.name for b in bob.list_repo_refs("bob/pub").branches} == {"main", "dev"}


def test_repo_ids_are_case_insensitive_and_rights_follow_the_stored_name(hub, tmp_path):
    """As on the Hub, ``BOB/PUB`` is bob/pub: found under any case, and the rights checked are
    those of the stored namespace, so a change of case never lends anyone bob's rights."""
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    server, raw, data = hub
    before = _victim(data)
    anon = HfApi(endpoint=server.endpoint, token=False)
    assert anon.model_info("BOB/Pub").id == "bob/pub"
    got = anon.hf_hub_download("Bob/PUB", "secret.txt", local_dir=tmp_path)
    assert Path(got).read_bytes() == SECRET
    alice = HfApi(endpoint=server.endpoint, token="hf_alice")
    for repo in ("BOB/secret", "Bob/Secret"):
        with pytest.raises(RepositoryNotFoundError):
            alice.model_info(repo)
    with pytest.raises(HfHubHTTPError) as err:
        alice.upload_file(path_or_fileobj=b"x", path_in_repo="x", repo_id="BOB/pub")
    assert err.value.response.status_code == 403
    alice.create_repo("alice/two")
    for name in ("Own", "OWN"):
        with pytest.raises(HfHubHTTPError) as err:
            alice.create_repo(f"alice/{name}")  # the same repo under another case
        assert err.value.response.status_code == 409
        status, _, _ = raw(
            "POST",
            "/api/repos/move",
            "hf_alice",
            json.dumps({"fromRepo": "alice/two", "toRepo": f"alice/{name}"}).encode(),
        )
        assert status == 409
    assert _victim(data) == before
    assert sorted(p.name for p in (data / "repos" / "models" / "alice").iterdir()) == ["own", "two"]
