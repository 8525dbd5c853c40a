"""On-disk state of the local Hub: content-addressed blobs plus immutable commit objects.

Layout under ``data_dir``: ``blobs/sha256/xx/<sha256>`` (file bytes, stored once whatever repos
hold them), ``repos/<type>s/<ns>/<name>/`` holding ``repo.json`` (settings), ``refs.json``
(branches, tags, PRs), ``commits/<id>.json`` (parents, message, and the full flat tree
``{path: {sha256, size, lfs}}``) and ``lfs/<sha256>`` (the LFS objects this repo may reference:
those it uploaded or committed), ``locks/`` (one lock file per repo) and ``tmp/<process>/``.

Several server processes may share one folder. Every change to a repo (create, commit, ref,
settings, delete) runs under that repo's cross-process ``filelock``, and every file is written
into the process's own temp folder, then renamed into place: a branch moves only by renaming
``refs.json`` after its commit object is on disk, so a crash (even ``kill -9``) mid-commit leaves
the branch where it was. A process holds a lock (``tmp/<process>.lock``) for its lifetime; at
start a server removes the temp folders whose lock nobody holds (their process is gone), so
nothing half-written survives a restart. Reads take no lock and write nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from ..atomic import atomic_write

GITATTRIBUTES = (
    "*.bin filter=lfs diff=lfs merge=lfs -text\n*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
    "*.gguf filter=lfs diff=lfs merge=lfs -text\n*.pt filter=lfs diff=lfs merge=lfs -text\n"
    "*.pth filter=lfs diff=lfs merge=lfs -text\n*.h5 filter=lfs diff=lfs merge=lfs -text\n"
    "*.onnx filter=lfs diff=lfs merge=lfs -text\n*.npy filter=lfs diff=lfs merge=lfs -text\n"
    "*.parquet filter=lfs diff=lfs merge=lfs -text\n*.zip filter=lfs diff=lfs merge=lfs -text\n"
)
LFS_SUFFIXES = tuple(
    "." + line.split()[0][2:] for line in GITATTRIBUTES.splitlines() if line.startswith("*.")
)
SHA_RE = re.compile(r"^[0-9a-f]{40}$")
# A revision of 40 hex digits (either case) names a commit and nothing else; 7 to 39 lowercase
# hex digits are a commit's short sha when no branch or tag has that name (git's rule).
SHA_LIKE_RE = re.compile(r"^[0-9a-fA-F]{40}$")
SHORT_SHA_RE = re.compile(r"^[0-9a-f]{7,39}$")
OID_RE = re.compile(r"^[0-9a-f]{64}$")


KEEP_CARD = object()  # apply_commit: README.md untouched, the card metadata carries over
# The Hub's text for a repo that is missing or hidden from the caller: huggingface_hub's own
# message already names the URL (hence the repo), and repeats no server text it contains.
REPO_NOT_FOUND = "Repository not found"


class StorageError(Exception):
    """A request the store refuses; ``code`` is the Hub's X-Error-Code, ``status`` the HTTP one."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers = headers or {}


def git_blob_oid(data: bytes) -> str:
    """Git's sha1 of a blob, the ``oid`` the Hub reports for a regular file."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
    )


@dataclass
class Entry:
    sha256: str
    size: int
    lfs: bool
    git_oid: str

    def to_json(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "size": self.size, "lfs": self.lfs, "oid": self.git_oid}


class Store:
    """All repos and blobs under one folder, shared safely by threads and processes.

    ``lock_timeout`` bounds the wait for another writer of the same repo (then a 503).
    """

    def __init__(self, data_dir: str | os.PathLike[str], lock_timeout: float = 120.0) -> None:
        self.root = Path(data_dir)
        for sub in ("blobs/sha256", "repos", "locks", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.lock_timeout = lock_timeout
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        name = f"{os.getpid()}-{secrets.token_hex(4)}"
        self.tmp_dir = self.root / "tmp" / name
        # The owner lock comes first and sits beside the folder: a folder whose lock nobody
        # holds belongs to a dead process; one with no lock file at all is an orphan.
        self._owner = _lock(self.root / "tmp" / f"{name}.lock")
        self._owner.acquire()
        self.tmp_dir.mkdir()
        self._sweep_dead_temp_dirs()

    def _sweep_dead_temp_dirs(self) -> None:
        """Remove temp folders of processes that are gone (their owner lock is free)."""
        tmp = self.root / "tmp"
        for lock_path in tmp.glob("*.lock"):
            if lock_path == Path(self._owner.lock_file):
                continue
            lock = _lock(lock_path, timeout=0)
            try:
                lock.acquire()
            except (Timeout, OSError):
                continue  # its process is alive
            try:
                shutil.rmtree(lock_path.with_suffix(""), ignore_errors=True)
                lock_path.unlink(missing_ok=True)
            finally:
                lock.release()
        for d in tmp.iterdir():
            if d.is_dir() and not d.with_name(f"{d.name}.lock").exists():
                shutil.rmtree(d, ignore_errors=True)

    def close(self) -> None:
        """Drop this process's temp folder (called when the server stops)."""
        if self._owner.is_locked:
            shutil.rmtree(self.tmp_dir, ignore_errors=True)
            Path(self._owner.lock_file).unlink(missing_ok=True)
            self._owner.release()

    # --- writing files ---------------------------------------------------------------------
    def write_atomic(self, path: Path, data: bytes) -> None:
        """Write through the one atomic helper, fsynced, with the temp file in this process's own
        folder: a ``kill -9`` then never leaves it inside a repo folder, and the next server
        start sweeps it."""
        atomic_write(path, data, fsync=True, tmp_dir=self.tmp_dir)

    def _write_json(self, path: Path, obj: Any) -> None:
        self.write_atomic(path, json.dumps(obj, indent=1, sort_keys=True).encode())

    # --- blobs ----------------------------------------------------------------------------
    def blob_path(self, sha256: str) -> Path:
        return self.root / "blobs" / "sha256" / sha256[:2] / sha256

    def has_blob(self, sha256: str, size: int | None = None) -> bool:
        p = self.blob_path(sha256)
        return p.is_file() and (size is None or p.stat().st_size == size)

    def put_bytes(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        if not self.has_blob(sha):
            self.write_atomic(self.blob_path(sha), data)
        return sha

    def temp_file(self) -> tuple[int, str]:
        return tempfile.mkstemp(dir=self.tmp_dir)

    def adopt_temp(self, tmp: str, sha256: str) -> None:
        dest = self.blob_path(sha256)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, dest)

    # --- which LFS objects a repo may reference ---------------------------------------------
    def _ledger(self, repo_type: str, repo_id: str, sha256: str) -> Path:
        return self.repo_dir(repo_type, repo_id) / "lfs" / sha256

    def repo_has_lfs(self, repo_type: str, repo_id: str, sha256: str, size: int | None) -> bool:
        """True when this repo uploaded or committed the object and its bytes are stored."""
        return self._ledger(repo_type, repo_id, sha256).is_file() and self.has_blob(sha256, size)

    def grant_lfs(self, repo_type: str, repo_id: str, sha256: str) -> None:
        """Record that the repo proved it holds ``sha256`` (it uploaded the bytes)."""
        with self.lock(repo_type, repo_id):
            if self.repo_meta(repo_type, repo_id) is None:
                raise StorageError(404, REPO_NOT_FOUND, "RepoNotFound")
            self._grant(repo_type, repo_id, sha256)

    def _grant(self, repo_type: str, repo_id: str, sha256: str) -> None:
        p = self._ledger(repo_type, repo_id, sha256)
        if not p.is_file():
            self.write_atomic(p, b"")

    # --- repos ----------------------------------------------------------------------------
    def repo_dir(self, repo_type: str, repo_id: str) -> Path:
        return self.root / "repos" / f"{repo_type}s" / repo_id

    @contextlib.contextmanager
    def lock(self, repo_type: str, repo_id: str) -> Iterator[None]:
        """This repo's writer lock: a thread lock inside the process, a file lock across them."""
        key = f"{repo_type}s/{repo_id}"
        with self._locks_guard:
            tlock = self._locks.setdefault(key, threading.Lock())
        if not tlock.acquire(timeout=self.lock_timeout):
            raise StorageError(503, f"{repo_id} is busy with another write; retry")
        try:
            path = self.root / "locks" / f"{key}.lock"
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                flock = _lock(path, timeout=self.lock_timeout)
                flock.acquire()
            except Timeout as e:
                raise StorageError(503, f"{repo_id} is busy with another write; retry") from e
            try:
                yield
            finally:
                flock.release()
        finally:
            tlock.release()

    def canonical_id(self, repo_type: str, repo_id: str) -> str:
        """The stored spelling of ``repo_id``: repo ids are case-insensitive, as on the Hub
        (``Alice/Model`` finds ``alice/model``). Unchanged when no repo matches."""
        if (self.repo_dir(repo_type, repo_id) / "repo.json").is_file():
            return repo_id
        ns, name = (part.lower() for part in repo_id.split("/", 1))
        base = self.root / "repos" / f"{repo_type}s"
        for ns_dir in base.iterdir() if base.is_dir() else ():
            if ns_dir.name.lower() != ns:
                continue
            for d in ns_dir.iterdir():
                if d.name.lower() == name and (d / "repo.json").is_file():
                    return f"{ns_dir.name}/{d.name}"
        return repo_id

    def repo_meta(self, repo_type: str, repo_id: str) -> dict[str, Any] | None:
        p = self.repo_dir(repo_type, repo_id) / "repo.json"
        return json.loads(p.read_text()) if p.is_file() else None

    def _require(self, repo_type: str, repo_id: str) -> dict[str, Any]:
        meta = self.repo_meta(repo_type, repo_id)
        if meta is None:
            raise StorageError(404, REPO_NOT_FOUND, "RepoNotFound")
        return meta

    def set_private(self, repo_type: str, repo_id: str, private: bool) -> None:
        with self.lock(repo_type, repo_id):
            meta = self._require(repo_type, repo_id)
            meta["private"] = private
            self._write_json(self.repo_dir(repo_type, repo_id) / "repo.json", meta)

    def list_repos(self, repo_type: str) -> list[str]:
        base = self.root / "repos" / f"{repo_type}s"
        return sorted(f"{p.parent.parent.name}/{p.parent.name}" for p in base.glob("*/*/repo.json"))

    def create_repo(self, repo_type: str, repo_id: str, private: bool, author: str) -> None:
        with self.lock(repo_type, repo_id):
            d = self.repo_dir(repo_type, repo_id)
            if (d / "repo.json").is_file() or self.canonical_id(repo_type, repo_id) != repo_id:
                raise StorageError(409, f"You already created this {repo_type} repo: {repo_id}")
            if d.exists():  # left by a create that crashed before repo.json: start clean
                os.replace(d, self.tmp_dir / f"stale-{secrets.token_hex(4)}")
            now = _now()
            sha = self.put_bytes(GITATTRIBUTES.encode())
            tree = {".gitattributes": self._entry(sha, GITATTRIBUTES.encode(), False).to_json()}
            cid = self._write_commit(d, [], tree, "initial commit", "", author)
            self._write_json(d / "refs.json", {"heads": {"main": cid}, "tags": {}, "prs": {}})
            # repo.json last: a repo exists only once it is complete.
            meta = {"private": private, "createdAt": now, "type": repo_type}
            self._write_json(d / "repo.json", meta)

    def delete_repo(self, repo_type: str, repo_id: str) -> None:
        with self.lock(repo_type, repo_id):
            self._require(repo_type, repo_id)
            trash = self.tmp_dir / f"deleted-{secrets.token_hex(4)}"
            # Atomic disappearance into this process's temp folder (swept if we crash now).
            os.replace(self.repo_dir(repo_type, repo_id), trash)
            shutil.rmtree(trash, ignore_errors=True)

    def refs(self, repo_type: str, repo_id: str) -> dict[str, dict[str, str]]:
        return json.loads((self.repo_dir(repo_type, repo_id) / "refs.json").read_text())

    @contextlib.contextmanager
    def editing_refs(self, repo_type: str, repo_id: str) -> Iterator[dict[str, dict[str, str]]]:
        """Read-modify-write of refs.json under the repo's lock; written only if no error."""
        with self.lock(repo_type, repo_id):
            self._require(repo_type, repo_id)
            refs = self.refs(repo_type, repo_id)
            yield refs
            self._write_json(self.repo_dir(repo_type, repo_id) / "refs.json", refs)

    def commit(self, repo_type: str, repo_id: str, cid: str) -> dict[str, Any]:
        p = self.repo_dir(repo_type, repo_id) / "commits" / f"{cid}.json"
        return json.loads(p.read_text())

    def resolve(self, repo_type: str, repo_id: str, rev: str) -> str:
        """A branch, tag, ``refs/...`` name or full commit sha -> commit sha."""
        refs = self.refs(repo_type, repo_id)
        return resolve_in(refs, rev, self.repo_dir(repo_type, repo_id))

    def _entry(self, sha: str, data: bytes | None, lfs: bool, size: int | None = None) -> Entry:
        if lfs:
            assert size is not None
            return Entry(sha, size, True, git_blob_oid(lfs_pointer(sha, size)))
        assert data is not None
        return Entry(sha, len(data), False, git_blob_oid(data))

    def _write_commit(
        self,
        d: Path,
        parents: list[str],
        tree: dict[str, Any],
        title: str,
        message: str,
        author: str,
        card: Any = None,
    ) -> str:
        body = {
            "parents": parents,
            "tree": tree,
            "title": title,
            "message": message,
            "author": author,
            "date": _now(),
        }
        if card is not KEEP_CARD:  # only a commit made before cards were kept lacks the key
            body["card"] = card
        raw = json.dumps(body, sort_keys=True).encode()
        cid = hashlib.sha1(raw).hexdigest()
        self._write_json(d / "commits" / f"{cid}.json", body)
        return cid

    def apply_commit(
        self,
        repo_type: str,
        repo_id: str,
        rev: str,
        ops: list[tuple[str, dict[str, Any]]],
        title: str,
        message: str,
        author: str,
        parent_commit: str | None = None,
        create_pr: bool = False,
        card: Any = KEEP_CARD,
    ) -> tuple[str, str | None]:
        """Apply validated operations as one commit; returns (commit id, PR number or None).

        ops are ("file", {path, data} or {path, sha256, size, oid} of a stored blob),
        ("lfsFile", {path, oid, size}), ("deletedFile", {path}) or ("deletedFolder", {path}).
        An LFS object must be one this repo uploaded or already holds. ``card`` is the README's
        metadata parsed at commit time (``KEEP_CARD``: the parent's). The branch moves only at
        the final refs write.
        """
        d = self.repo_dir(repo_type, repo_id)
        with self.lock(repo_type, repo_id):
            self._require(repo_type, repo_id)
            refs = self.refs(repo_type, repo_id)
            kind, name = branch_of(rev)
            pr_num = None
            if create_pr:
                # A pull request starts from a branch, as on the Hub: not a sha, tag or PR.
                if kind != "heads" or name not in refs["heads"]:
                    raise StorageError(
                        404, f"Invalid rev id: {rev} is not a branch", "RevisionNotFound"
                    )
                head = refs["heads"][name]
                pr_num = str(max((int(n) for n in refs["prs"]), default=0) + 1)
                kind, name = "prs", pr_num
            elif name not in refs[kind]:
                if rev in refs["tags"] or SHA_LIKE_RE.match(rev):
                    raise StorageError(400, f"Cannot commit to {rev!r}: not a branch")
                raise StorageError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
            else:
                head = refs[kind][name]
            if parent_commit is not None and parent_commit != head:
                raise StorageError(
                    412,
                    "The branch was updated since you opened this page. Please refresh and try "
                    f"again. (It moved from {parent_commit} to {head}.)",
                )
            parent = self.commit(repo_type, repo_id, head)
            tree = dict(parent["tree"])
            if card is KEEP_CARD:
                card = parent.get("card", KEEP_CARD)
            for key, value in ops:
                path = value["path"]
                if key == "file" and "sha256" in value:
                    entry = Entry(value["sha256"], value["size"], False, value["oid"])
                    tree[path] = entry.to_json()
                elif key == "file":
                    sha = self.put_bytes(value["data"])
                    tree[path] = self._entry(sha, value["data"], False).to_json()
                elif key == "lfsFile":
                    oid, size = value["oid"], value["size"]
                    if size is None and self.repo_has_lfs(repo_type, repo_id, oid, None):
                        size = self.blob_path(oid).stat().st_size
                    if not self.repo_has_lfs(repo_type, repo_id, oid, size):
                        raise StorageError(
                            400,
                            f"LFS object {oid} ({size} bytes) for {path} was not uploaded to "
                            f"{repo_id}: upload it through this repo's LFS batch API first",
                        )
                    tree[path] = self._entry(oid, None, True, size).to_json()
                elif key == "deletedFile":
                    # A folder named without its trailing '/' is deleted as a folder, as the Hub does.
                    inside = (
                        [p for p in tree if p.startswith(path + "/")] if path not in tree else []
                    )
                    for p in inside:
                        del tree[p]
                    if tree.pop(path, None) is None and not inside:
                        raise StorageError(404, f"File {path} does not exist", "EntryNotFound")
                elif key == "deletedFolder":
                    prefix = path.rstrip("/") + "/"
                    for p in [p for p in tree if p.startswith(prefix)]:
                        del tree[p]
            check_no_clash(tree, [v["path"] for k, v in ops if k in ("file", "lfsFile")])
            cid = self._write_commit(d, [head], tree, title, message, author, card)
            refs[kind][name] = cid
            self._write_json(d / "refs.json", refs)
            return cid, pr_num

    def squash(self, repo_type: str, repo_id: str, branch: str, title: str, author: str) -> str:
        """Replace ``branch``'s history by one parentless commit of its head's tree."""
        d = self.repo_dir(repo_type, repo_id)
        with self.lock(repo_type, repo_id):
            self._require(repo_type, repo_id)
            refs = self.refs(repo_type, repo_id)
            kind, name = branch_of(branch)
            if name not in refs[kind]:
                raise StorageError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            head = self.commit(repo_type, repo_id, refs[kind][name])
            cid = self._write_commit(
                d, [], head["tree"], title, "", author, head.get("card", KEEP_CARD)
            )
            refs[kind][name] = cid
            self._write_json(d / "refs.json", refs)
            return cid

    def history(self, repo_type: str, repo_id: str, cid: str) -> list[tuple[str, dict[str, Any]]]:
        out = []
        while True:
            c = self.commit(repo_type, repo_id, cid)
            out.append((cid, c))
            if not c["parents"]:
                return out
            cid = c["parents"][0]


def resolve_in(refs: dict[str, dict[str, str]], rev: str, repo_dir: Path) -> str:
    """``rev`` -> commit sha, as the Hub resolves it.

    40 hex digits are a commit sha and only a sha: no branch or tag can stand in for one, so a
    revision pinned by sha always serves the same bytes. Otherwise ``refs/...`` names, branches,
    tags, then a unique short sha (7 to 39 hex digits).
    """
    commits = repo_dir / "commits"
    if SHA_LIKE_RE.match(rev):
        if (commits / f"{rev.lower()}.json").is_file():
            return rev.lower()
        raise StorageError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
    for prefix, kind in (("refs/heads/", "heads"), ("refs/tags/", "tags"), ("refs/pr/", "prs")):
        if rev.startswith(prefix) and rev[len(prefix) :] in refs[kind]:
            return refs[kind][rev[len(prefix) :]]
    if rev in refs["heads"]:
        return refs["heads"][rev]
    if rev in refs["tags"]:
        return refs["tags"][rev]
    if SHORT_SHA_RE.match(rev):
        found = [p.stem for p in commits.glob(f"{rev}*.json")]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise StorageError(
                400, f"Short sha {rev} is ambiguous: give more digits", "RevisionNotFound"
            )
    raise StorageError(404, f"Invalid rev id: {rev}", "RevisionNotFound")


def check_no_clash(tree: dict[str, Any], added: list[str]) -> None:
    """Refuse a tree where a path is both a file and a folder (``x`` and ``x/y``): a snapshot
    of it could not be written to any disk. Linear in the tree's size."""
    if not added:
        return
    folders = {p[:i] for p in tree for i, c in enumerate(p) if c == "/"}
    for path in added:
        if path in folders:
            raise StorageError(
                400, f"Cannot add the file {path!r}: a folder of that name holds files"
            )
        for i, c in enumerate(path):
            if c == "/" and path[:i] in tree:
                raise StorageError(
                    400, f"Cannot add {path!r}: {path[:i]!r} is a file, not a folder"
                )


def branch_of(rev: str) -> tuple[str, str]:
    """Where a commit to ``rev`` lands: ("heads", name) or ("prs", number)."""
    if rev.startswith("refs/pr/"):
        return "prs", rev[len("refs/pr/") :]
    if rev.startswith("refs/heads/"):
        return "heads", rev[len("refs/heads/") :]
    return "heads", rev


def _lock(path: Path, timeout: float = -1) -> FileLock:
    """A cross-process lock on ``path`` (flock); the file stays, so no waiter is ever orphaned."""
    return FileLock(path, timeout=timeout, thread_local=False, preserve_lock_file=True)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
