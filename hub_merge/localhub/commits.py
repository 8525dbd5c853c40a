"""A commit's NDJSON body, taken line by line, and the card check every commit passes.

The body arrives in groups of lines (``limits.read_lines``); each regular file is decoded and
stored as a blob as soon as its line is read, so memory holds one line at a time, not the whole
commit. A blob stored for a commit that is then refused stays unreferenced (blobs are content
addressed, like the LFS objects a client uploads and never commits).

The README check applies whatever the README's storage (a regular file or an LFS object): its
front matter is parsed once here, with ``card_rules``' bounds (1 MiB, no aliases), and the
metadata is kept in the commit object, so that no read ever parses a card again.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from ..card_rules import FRONT_MATTER_MAX_BYTES, FrontMatterError, check_card_metadata
from ..card_rules import parse_front_matter as parse_card
from .limits import parse_json
from .storage import KEEP_CARD, OID_RE, StorageError, Store, git_blob_oid
from .validation import RepoRef, check_repo_path, safe_text

OPERATIONS = ("file", "lfsFile", "deletedFile", "deletedFolder")
README = "README.md"


class CommitBody:
    """Operations parsed from a commit's NDJSON lines, fed as they arrive."""

    def __init__(self, store: Store, repo: RepoRef) -> None:
        self.store, self.repo = store, repo
        self.header: dict[str, Any] | None = None
        self.ops: list[tuple[str, dict[str, Any]]] = []
        self.readme: tuple[str, dict[str, Any]] | None = None  # the last operation on README.md
        self.lines = 0

    def feed(self, lines: list[bytearray]) -> None:
        for i, line in enumerate(lines):
            self.lines += 1
            if line.strip():
                self._line(line, self.lines)
            lines[i] = bytearray()  # a file's line is freed as soon as its blob is stored

    def _line(self, line: bytes | bytearray, n: int) -> None:
        item = parse_json(line, f"ndjson at line {n}")
        if not isinstance(item, dict) or not isinstance(item.get("value"), dict):
            raise StorageError(400, f"Malformed ndjson at line {n}: expected {{key, value}}")
        key, value = item.get("key"), item["value"]
        if key == "header":
            self.header = value
            return
        if key not in OPERATIONS:
            raise StorageError(400, f"Unknown operation at line {n}")
        path = value.get("path")
        if key == "deletedFolder" and isinstance(path, str) and path.endswith("/"):
            path = path[:-1]  # the client names a folder with its trailing '/'
        path = check_repo_path(path)
        if key == "file":
            try:
                data = base64.b64decode(value.get("content", ""), validate=True)
            except (ValueError, TypeError) as e:
                raise StorageError(400, f"Invalid base64 content for {safe_text(path)}") from e
            sha = self.store.put_bytes(data)
            op = {"path": path, "sha256": sha, "size": len(data), "oid": git_blob_oid(data)}
            if path == README:
                op["data"] = data  # kept for the card check
        elif key == "lfsFile":
            oid, size = value.get("oid"), value.get("size")
            if not isinstance(oid, str) or not OID_RE.match(oid):
                raise StorageError(400, f"Invalid LFS oid for {safe_text(path)}")
            if size is not None and (not isinstance(size, int) or size < 0):
                raise StorageError(400, f"Invalid LFS size for {safe_text(path)}")
            op = {"path": path, "oid": oid, "size": size}
        else:
            op = {"path": path}
        self.ops.append((key, op))
        if path == README and key != "deletedFolder":
            self.readme = (key, op)

    def summary(self) -> tuple[str, str, str | None]:
        """(title, description, parent commit) from the header line, which must be there."""
        h = self.header
        if h is None or not isinstance(h.get("summary", ""), str):
            raise StorageError(400, "Malformed ndjson: the first line must be a header")
        parent = h.get("parentCommit")
        return (
            str(h.get("summary") or "Upload files"),
            str(h.get("description") or ""),
            parent if isinstance(parent, str) else None,
        )

    def card(self) -> Any:
        """The new card metadata (a dict, or None), or ``KEEP_CARD`` when README.md is untouched.

        Raises a 400 when the README's metadata is refused, whatever its storage.
        """
        if self.readme is None:
            return KEEP_CARD
        key, op = self.readme
        if key == "deletedFile":
            return None
        if key == "file":
            text = op["data"].decode("utf-8", "replace")
        else:
            text = self._lfs_readme(op)
            if text is None:
                return None  # not uploaded to this repo: apply_commit refuses the commit
        try:
            meta = parse_card(text)
        except FrontMatterError as e:
            raise StorageError(400, f"Invalid metadata in README.md: {e}") from e
        check = check_card_metadata(meta, self.repo.rtype)
        if check.errors:
            raise StorageError(400, "Invalid metadata in README.md: " + "; ".join(check.errors))
        return _jsonable(meta)

    def _lfs_readme(self, op: dict[str, Any]) -> str | None:
        """The start of an LFS README: enough for 1 MiB of front matter, never more."""
        st, r = self.store, self.repo
        if not st.repo_has_lfs(r.rtype, r.repo_id, op["oid"], op["size"]):
            return None
        with open(st.blob_path(op["oid"]), "rb") as f:
            head = f.read(FRONT_MATTER_MAX_BYTES + 8192)
            more = bool(f.read(1))
        return head.decode("utf-8", "ignore" if more else "replace")


def _jsonable(meta: dict[str, Any] | None) -> dict[str, Any] | None:
    """Card metadata as JSON (YAML dates become strings), or a 400 when it cannot be."""
    if meta is None:
        return None
    try:
        return json.loads(json.dumps(meta, default=str))
    except (TypeError, ValueError, RecursionError) as e:
        raise StorageError(400, "Invalid metadata in README.md: not representable as JSON") from e
