"""On-disk state of the local Hub: content-addressed blobs plus immutable commit objects.

Layout under ``data_dir``: ``blobs/sha256/xx/<sha256>`` (file bytes), ``repos/<type>s/<ns>/<name>/``
holding ``repo.json`` (settings), ``refs.json`` (branches, tags, PRs) and ``commits/<id>.json``
(parents, message, and the full flat tree ``{path: {sha256, size, lfs}}``). Every write is
write-temp-then-rename, and a branch moves only by rewriting ``refs.json`` after its commit object
is on disk, so a crash mid-commit leaves the branch where it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
OID_RE = re.compile(r"^[0-9a-f]{64}$")


class StorageError(Exception):
    """A request the store refuses; ``code`` is the Hub's X-Error-Code, ``status`` the HTTP one."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_json(path: Path, obj: Any) -> None:
    _atomic_write(path, json.dumps(obj, indent=1, sort_keys=True).encode())


def git_blob_oid(data: bytes) -> str:
    """Git's sha1 of a blob, the ``oid`` the Hub reports for a regular file."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
    )


def check_repo_path(path: object) -> str:
    """Refuse paths that could escape the repo or mean different things on different systems."""
    if not isinstance(path, str) or not path or len(path) > 1024:
        raise StorageError(400, f"Invalid path {path!r}: must be a non-empty string")
    if path.startswith("/") or "\\" in path or "\0" in path:
        raise StorageError(400, f"Invalid path {path!r}: no absolute paths, backslashes or NUL")
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts) or parts[0] == ".git":
        raise StorageError(400, f"Invalid path {path!r}: no empty, '.', '..' or .git segments")
    return path


@dataclass
class Entry:
    sha256: str
    size: int
    lfs: bool
    git_oid: str

    def to_json(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "size": self.size, "lfs": self.lfs, "oid": self.git_oid}


class Store:
    """All repos and blobs under one folder; thread-safe through one lock per repo."""

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.root = Path(data_dir)
        (self.root / "blobs" / "tmp").mkdir(parents=True, exist_ok=True)
        (self.root / "repos").mkdir(parents=True, exist_ok=True)
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    # --- blobs ----------------------------------------------------------------------------
    def blob_path(self, sha256: str) -> Path:
        return self.root / "blobs" / "sha256" / sha256[:2] / sha256

    def has_blob(self, sha256: str, size: int | None = None) -> bool:
        p = self.blob_path(sha256)
        return p.is_file() and (size is None or p.stat().st_size == size)

    def put_bytes(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        if not self.has_blob(sha):
            _atomic_write(self.blob_path(sha), data)
        return sha

    def temp_file(self) -> tuple[int, str]:
        return tempfile.mkstemp(dir=self.root / "blobs" / "tmp")

    def adopt_temp(self, tmp: str, sha256: str) -> None:
        dest = self.blob_path(sha256)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, dest)

    # --- repos ----------------------------------------------------------------------------
    def repo_dir(self, repo_type: str, repo_id: str) -> Path:
        return self.root / "repos" / f"{repo_type}s" / repo_id

    def lock(self, repo_type: str, repo_id: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(f"{repo_type}/{repo_id}", threading.Lock())

    def repo_meta(self, repo_type: str, repo_id: str) -> dict[str, Any] | None:
        p = self.repo_dir(repo_type, repo_id) / "repo.json"
        return json.loads(p.read_text()) if p.is_file() else None

    def set_private(self, repo_type: str, repo_id: str, private: bool) -> None:
        meta = self.repo_meta(repo_type, repo_id) or {}
        meta["private"] = private
        _write_json(self.repo_dir(repo_type, repo_id) / "repo.json", meta)

    def list_repos(self, repo_type: str) -> list[str]:
        base = self.root / "repos" / f"{repo_type}s"
        return sorted(f"{p.parent.parent.name}/{p.parent.name}" for p in base.glob("*/*/repo.json"))

    def create_repo(self, repo_type: str, repo_id: str, private: bool, author: str) -> None:
        with self.lock(repo_type, repo_id):
            d = self.repo_dir(repo_type, repo_id)
            if (d / "repo.json").is_file():
                raise StorageError(409, f"You already created this {repo_type} repo: {repo_id}")
            now = _now()
            sha = self.put_bytes(GITATTRIBUTES.encode())
            tree = {".gitattributes": self._entry(sha, GITATTRIBUTES.encode(), False).to_json()}
            cid = self._write_commit(d, [], tree, "initial commit", "", author)
            _write_json(d / "refs.json", {"heads": {"main": cid}, "tags": {}, "prs": {}})
            # repo.json last: a repo exists only once it is complete.
            _write_json(d / "repo.json", {"private": private, "createdAt": now, "type": repo_type})

    def delete_repo(self, repo_type: str, repo_id: str) -> None:
        with self.lock(repo_type, repo_id):
            d = self.repo_dir(repo_type, repo_id)
            trash = d.with_name(f".deleted-{d.name}-{time.time_ns()}")
            os.replace(d, trash)  # atomic disappearance, then clean up
            shutil.rmtree(trash, ignore_errors=True)

    def refs(self, repo_type: str, repo_id: str) -> dict[str, dict[str, str]]:
        return json.loads((self.repo_dir(repo_type, repo_id) / "refs.json").read_text())

    def write_refs(self, repo_type: str, repo_id: str, refs: dict[str, Any]) -> None:
        _write_json(self.repo_dir(repo_type, repo_id) / "refs.json", refs)

    def commit(self, repo_type: str, repo_id: str, cid: str) -> dict[str, Any]:
        p = self.repo_dir(repo_type, repo_id) / "commits" / f"{cid}.json"
        return json.loads(p.read_text())

    def resolve(self, repo_type: str, repo_id: str, rev: str) -> str:
        """A branch, tag, ``refs/...`` name or full commit sha -> commit sha."""
        refs = self.refs(repo_type, repo_id)
        for prefix, kind in (("refs/heads/", "heads"), ("refs/tags/", "tags"), ("refs/pr/", "prs")):
            if rev.startswith(prefix) and rev[len(prefix) :] in refs[kind]:
                return refs[kind][rev[len(prefix) :]]
        if rev in refs["heads"]:
            return refs["heads"][rev]
        if rev in refs["tags"]:
            return refs["tags"][rev]
        if (
            SHA_RE.match(rev)
            and (self.repo_dir(repo_type, repo_id) / "commits" / f"{rev}.json").is_file()
        ):
            return rev
        raise StorageError(404, f"Invalid rev id: {rev}", "RevisionNotFound")

    def branch_of(self, rev: str) -> tuple[str, str]:
        """Where a commit to ``rev`` lands: ("heads", name) or ("prs", number)."""
        if rev.startswith("refs/pr/"):
            return "prs", rev[len("refs/pr/") :]
        if rev.startswith("refs/heads/"):
            return "heads", rev[len("refs/heads/") :]
        return "heads", rev

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
    ) -> str:
        body = {
            "parents": parents,
            "tree": tree,
            "title": title,
            "message": message,
            "author": author,
            "date": _now(),
        }
        raw = json.dumps(body, sort_keys=True).encode()
        cid = hashlib.sha1(raw).hexdigest()
        _write_json(d / "commits" / f"{cid}.json", body)
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
    ) -> tuple[str, str | None]:
        """Apply validated operations as one commit; returns (commit id, PR number or None).

        ops are ("file", {path, data}), ("lfsFile", {path, oid, size}), ("deletedFile", {path})
        or ("deletedFolder", {path}). The branch moves only at the final refs write.
        """
        d = self.repo_dir(repo_type, repo_id)
        with self.lock(repo_type, repo_id):
            refs = self.refs(repo_type, repo_id)
            kind, name = self.branch_of(rev)
            pr_num = None
            if create_pr:
                head = self.resolve(repo_type, repo_id, rev)
                pr_num = str(max((int(n) for n in refs["prs"]), default=0) + 1)
                kind, name = "prs", pr_num
            elif name not in refs[kind]:
                if rev in refs["tags"] or SHA_RE.match(rev):
                    raise StorageError(400, f"Cannot commit to {rev!r}: not a branch")
                raise StorageError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
            else:
                head = refs[kind][name]
            if parent_commit is not None and parent_commit != head:
                raise StorageError(
                    412,
                    f"A commit has happened since {parent_commit}: the branch is now at {head}. "
                    "Pull and retry.",
                )
            tree = dict(self.commit(repo_type, repo_id, head)["tree"])
            for key, value in ops:
                path = value["path"]
                if key == "file":
                    sha = self.put_bytes(value["data"])
                    tree[path] = self._entry(sha, value["data"], False).to_json()
                elif key == "lfsFile":
                    tree[path] = self._entry(value["oid"], None, True, value["size"]).to_json()
                elif key == "deletedFile":
                    if tree.pop(path, None) is None:
                        raise StorageError(404, f"File {path} does not exist", "EntryNotFound")
                elif key == "deletedFolder":
                    prefix = path.rstrip("/") + "/"
                    for p in [p for p in tree if p.startswith(prefix)]:
                        del tree[p]
            cid = self._write_commit(d, [head], tree, title, message, author)
            refs[kind][name] = cid
            self.write_refs(repo_type, repo_id, refs)
            return cid, pr_num

    def history(self, repo_type: str, repo_id: str, cid: str) -> list[tuple[str, dict[str, Any]]]:
        out = []
        while True:
            c = self.commit(repo_type, repo_id, cid)
            out.append((cid, c))
            if not c["parents"]:
                return out
            cid = c["parents"][0]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
