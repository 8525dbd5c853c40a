"""Read-only routes of the local Hub: repo info, listings, trees, refs, commits, downloads.

Every function here is synchronous and runs in Starlette's thread pool (the app wraps it), so
disk reads and JSON parsing never hold the event loop. None of them writes anything.
"""

from __future__ import annotations

import hashlib
import html
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ..card_rules import FRONT_MATTER_MAX_BYTES, base_model_links, parse_front_matter
from .auth import Identity
from .routes_repos import last_commits
from .storage import StorageError
from .validation import RepoRef, check_revision, decode_segment, split_rev

if TYPE_CHECKING:
    from .app import HubApp

CHUNK = 64 * 1024


def _flag(request: Request, name: str) -> bool:
    return request.query_params.get(name, "").lower() in ("1", "true")


def _card(hub: HubApp, commit: dict[str, Any]) -> dict[str, Any] | None:
    """The README's metadata, parsed once when the commit was made (``commits.CommitBody``).

    Only a commit written before metadata was kept lacks the key; its README is parsed with the
    same bounds (1 MiB of front matter, no aliases) a commit's check applies.
    """
    if "card" in commit:
        card = commit["card"]
        return card if isinstance(card, dict) else None
    entry = commit["tree"].get("README.md")
    if entry is None or entry["size"] > 16 * 1024 * 1024:
        return None
    try:
        with open(hub.store.blob_path(entry["sha256"]), "rb") as f:
            return parse_front_matter(f.read(FRONT_MATTER_MAX_BYTES + 8192).decode("utf-8"))
    except (ValueError, UnicodeDecodeError, OSError):
        return None


def repo_json(
    hub: HubApp, repo: RepoRef, rev: str, full: bool, blobs: bool = False
) -> dict[str, Any]:
    st, rtype, repo_id = hub.store, repo.rtype, repo.repo_id
    cid = st.resolve(rtype, repo_id, rev)
    commit = st.commit(rtype, repo_id, cid)
    tree, meta = commit["tree"], st.repo_meta(rtype, repo_id) or {}
    card = _card(hub, commit) or {}
    tags = [str(t) for t in (card.get("tags") or []) if isinstance(t, (str, int))]
    if isinstance(card.get("library_name"), str):
        tags.append(card["library_name"])
    if isinstance(card.get("license"), str):
        tags.append(f"license:{card['license']}")
    for relation, base in base_model_links(card):
        tags += [f"base_model:{base}", f"base_model:{relation}:{base}"]
    out: dict[str, Any] = {
        "id": repo_id,
        "_id": repo_id,
        "author": repo.namespace,
        "sha": cid,
        "lastModified": commit["date"],
        "createdAt": meta.get("createdAt"),
        "private": bool(meta.get("private")),
        "gated": False,
        "disabled": False,
        "downloads": 0,
        "likes": 0,
        "tags": list(dict.fromkeys(tags)),
    }
    if rtype == "model":
        out["library_name"] = card.get("library_name")
        out["pipeline_tag"] = card.get("pipeline_tag")
    if full:
        out["cardData"] = card or None
        sibs = []
        for path, e in sorted(tree.items()):
            sib: dict[str, Any] = {"rfilename": path}
            if blobs:
                sib.update(size=e["size"], blobId=e["oid"])
                if e["lfs"]:
                    sib["lfs"] = {"sha256": e["sha256"], "size": e["size"], "pointerSize": 134}
            sibs.append(sib)
        out["siblings"] = sibs
        out["spaces"] = []
    return out


def info(hub: HubApp, request: Request, repo: RepoRef, ident: Identity | None) -> Response:
    raw = request.path_params.get("rev")
    rev = check_revision(decode_segment(raw)) if raw else "main"
    return JSONResponse(repo_json(hub, repo, rev, True, _flag(request, "blobs")))


def list_repos(hub: HubApp, request: Request, rtype: str, ident: Identity | None) -> Response:
    q = request.query_params
    search, author = q.get("search", "").lower(), q.get("author")
    filters = q.getlist("filter")
    full = _flag(request, "full") or _flag(request, "cardData")
    expand = q.getlist("expand") + q.getlist("expand[]")
    items = []
    for repo_id in hub.store.list_repos(rtype):
        ns, name = repo_id.split("/", 1)
        repo = RepoRef(rtype, ns, name)
        if not hub.access.can_read(ident, repo):
            continue
        if author and ns != author:
            continue
        if search and search not in repo_id.lower():
            continue
        try:
            item = repo_json(hub, repo, "main", True)
        except (StorageError, OSError, ValueError):
            continue  # deleted or being created by another process right now
        if not all(f in item["tags"] for f in filters):
            continue
        if not full and "cardData" not in expand:
            item.pop("cardData", None)
        if not full and "siblings" not in expand:
            item.pop("siblings", None)
        items.append(item)
    sort = q.get("sort")
    if sort in ("lastModified", "createdAt", "downloads", "likes", "id"):
        items.sort(key=lambda x: x.get(sort) or "", reverse=q.get("direction") != "1")
    limit = q.get("limit")
    if limit and limit.isdigit():
        items = items[: int(limit)]
    return JSONResponse(items)


def tree(hub: HubApp, request: Request, repo: RepoRef, ident: Identity | None) -> Response:
    rev, path = split_rev(request.path_params["rest"].split("/"))
    st = hub.store
    files_in = st.commit(repo.rtype, repo.repo_id, st.resolve(repo.rtype, repo.repo_id, rev))
    entries = files_in["tree"]
    recursive = _flag(request, "recursive")
    prefix = path.strip("/") + "/" if path.strip("/") else ""
    if prefix and not any(p.startswith(prefix) for p in entries):
        raise StorageError(404, f"Path {path} not found at {rev}", "EntryNotFound")
    files, dirs = [], set()
    for p, e in sorted(entries.items()):
        if not p.startswith(prefix):
            continue
        rel = p[len(prefix) :].split("/")
        for i in range(1, len(rel)):
            if recursive or i == 1:
                dirs.add(prefix + "/".join(rel[:i]))
        if recursive or len(rel) == 1:
            item = {"type": "file", "path": p, "size": e["size"], "oid": e["oid"]}
            if e["lfs"]:
                item["lfs"] = {"oid": e["sha256"], "size": e["size"], "pointerSize": 134}
            files.append(item)
    out = [
        {"type": "directory", "path": d, "size": 0, "oid": hashlib.sha1(d.encode()).hexdigest()}
        for d in sorted(dirs)
    ] + files
    if _flag(request, "expand"):  # ``list_repo_tree(expand=True)``: each entry's lastCommit
        cid = st.resolve(repo.rtype, repo.repo_id, rev)
        last = last_commits(hub, repo, cid, [item["path"] for item in out])
        for item in out:
            item["lastCommit"] = last[item["path"]]
    return JSONResponse(out)


def refs(hub: HubApp, request: Request, repo: RepoRef, ident: Identity | None) -> Response:
    table = hub.store.refs(repo.rtype, repo.repo_id)

    def fmt(kind: str, prefix: str) -> list[dict[str, str]]:
        return [
            {"name": n, "ref": f"{prefix}{n}", "targetCommit": c}
            for n, c in sorted(table[kind].items())
        ]

    out = {"branches": fmt("heads", "refs/heads/"), "tags": fmt("tags", "refs/tags/")}
    out.update(converts=[], pullRequests=fmt("prs", "refs/pr/"))
    return JSONResponse(out)


def commits(hub: HubApp, request: Request, repo: RepoRef, ident: Identity | None) -> Response:
    raw = request.path_params.get("rev") or ""
    rev = check_revision(decode_segment(raw)) if raw else "main"
    st = hub.store
    cid = st.resolve(repo.rtype, repo.repo_id, rev)
    expand = request.query_params.getlist("expand[]") + request.query_params.getlist("expand")
    formatted = "formatted" in expand or _flag(request, "formatted")
    out = []
    for c_id, c in st.history(repo.rtype, repo.repo_id, cid):
        item = {
            "id": c_id,
            "title": c["title"],
            "message": c["message"],
            "date": c["date"],
            "authors": [{"user": c["author"]}],
        }
        if formatted:  # the Hub renders Markdown; escaped text in a paragraph is its plain case
            item["formatted"] = {
                "title": html.escape(c["title"]),
                "message": f"<p>{html.escape(c['message'])}</p>" if c["message"] else "",
            }
        out.append(item)
    return JSONResponse(out)


def resolve(hub: HubApp, request: Request, repo: RepoRef, ident: Identity | None) -> Response:
    rev, path = split_rev(request.path_params["rest"].split("/"))
    st = hub.store
    cid = st.resolve(repo.rtype, repo.repo_id, rev)
    entry = st.commit(repo.rtype, repo.repo_id, cid)["tree"].get(path)
    if entry is None:
        raise StorageError(404, f"Entry not found: {path}", "EntryNotFound") from None
    size = entry["size"]
    headers = {
        "X-Repo-Commit": cid,
        "Accept-Ranges": "bytes",
        "Content-Type": "application/octet-stream",
        "ETag": f'"{entry["sha256"] if entry["lfs"] else entry["oid"]}"',
    }
    if entry["lfs"]:
        headers["X-Linked-Etag"] = f'"{entry["sha256"]}"'
        headers["X-Linked-Size"] = str(size)
    start, end, status = 0, size - 1, 200
    rng = request.headers.get("range")
    if rng:
        mt = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
        if not mt or (not mt.group(1) and not mt.group(2)):
            raise StorageError(
                416, "Bad Range header", headers={"Content-Range": f"bytes */{size}"}
            )
        if mt.group(1):
            start = int(mt.group(1))
            end = min(int(mt.group(2)), size - 1) if mt.group(2) else size - 1
        else:
            start = max(size - int(mt.group(2)), 0)
        if start >= size or start > end:
            raise StorageError(
                416, "Range not satisfiable", headers={"Content-Range": f"bytes */{size}"}
            )
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    length = end - start + 1 if size else 0
    headers["Content-Length"] = str(length)
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers)
    fail_after = hub.fail_downloads.pop(path, None)
    key = f"{repo.repo_id}/{path}"
    hub.served[key] = hub.served.get(key, 0) + length
    blob = st.blob_path(entry["sha256"])
    return StreamingResponse(
        _stream(blob, start, length, fail_after), status_code=status, headers=headers
    )


class _DropConnection(Exception):
    """Raised mid-body to make uvicorn close the socket (test hook for resumed downloads)."""


def _stream(blob: Path, start: int, length: int, fail_after: int | None) -> Iterator[bytes]:
    """A sync generator: Starlette iterates it in its thread pool."""
    sent = 0
    with open(blob, "rb") as f:
        f.seek(start)
        while sent < length:
            n = min(CHUNK, length - sent)
            if fail_after is not None:
                n = min(n, fail_after - sent)
                if n <= 0:
                    raise _DropConnection("test hook: dropping the download")
            chunk = f.read(n)
            if not chunk:
                break
            sent += len(chunk)
            yield chunk
