"""Routes of the local Hub for whole repos and path lookups, as the ``hf`` CLI calls them.

- ``POST /api/{type}s/{repo}/paths-info/{rev}``: what ``get_paths_info``, ``HfFileSystem`` and
  ``local_dir`` downloads ask (a form or JSON body with ``paths``);
- ``GET /api/{type}s/{repo}/auth-check[/write]``: may the caller read (write) this repo;
- ``POST /api/repos/move``: rename a repo within the caller's own namespace (``hf repos move``);
- ``POST /api/{type}s/{repo}/duplicate``: copy a repo the caller can read into their namespace
  (``hf repos duplicate``); commits and refs are copied, blobs are shared (content addressed);
- ``GET /api/settings/repositories``: the caller's own repos (``hf repos list``).

Rights are those of the rest of the server: a caller writes only under their own namespace.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from .auth import Identity
from .limits import LIST_BODY, SMALL_BODY, parse_json
from .storage import StorageError
from .validation import PREFIX, TYPES, RepoRef, check_revision, decode_segment, repo_ref

if TYPE_CHECKING:
    from .app import HubApp

MAX_PATHS = 1000
MOVED = "moved.json"  # left in a moved repo's old folder: {"to": new repo id}


def _entry_json(path: str, e: dict[str, Any]) -> dict[str, Any]:
    item = {"type": "file", "path": path, "size": e["size"], "oid": e["oid"]}
    if e["lfs"]:
        item["lfs"] = {"oid": e["sha256"], "size": e["size"], "pointerSize": 134}
    return item


async def paths_info(
    hub: HubApp, request: Request, repo: RepoRef, ident: Identity | None
) -> Response:
    raw_rev = request.path_params.get("rev") or ""
    rev = check_revision(decode_segment(raw_rev)) if raw_rev else "main"
    raw = await hub.read_body(request, LIST_BODY)
    if request.headers.get("content-type", "").startswith("application/json"):
        body = parse_json(raw or b"{}")
        paths = body.get("paths") if isinstance(body, dict) else None
        expand = body.get("expand") if isinstance(body, dict) else None
    else:
        form = parse_qs(raw.decode("latin-1"), max_num_fields=MAX_PATHS + 10)
        paths, expand = form.get("paths"), (form.get("expand") or [None])[-1]
    if isinstance(paths, str):
        paths = [paths]
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise StorageError(400, "Expected 'paths': a list of paths in the repo")
    if len(paths) > MAX_PATHS:
        raise StorageError(400, f"At most {MAX_PATHS} paths per request")
    wants_last = expand is True or str(expand).lower() in ("1", "true")
    return await run_in_threadpool(_paths_info, hub, repo, rev, paths, wants_last)


def _paths_info(
    hub: HubApp, repo: RepoRef, rev: str, paths: list[str], expand: bool = False
) -> Response:
    st = hub.store
    cid = st.resolve(repo.rtype, repo.repo_id, rev)
    tree = st.commit(repo.rtype, repo.repo_id, cid)["tree"]
    folders = {p[:i] for p in tree for i, c in enumerate(p) if c == "/"}
    out = []
    for path in dict.fromkeys(p.strip("/") for p in paths):
        if path in tree:
            out.append(_entry_json(path, tree[path]))
        elif path in folders:
            oid = hashlib.sha1(path.encode()).hexdigest()
            out.append({"type": "directory", "path": path, "oid": oid})
    if expand:  # ``expand=True``: the commit that last changed each path (as the Hub's lastCommit)
        last = last_commits(hub, repo, cid, [item["path"] for item in out])
        for item in out:
            if item["path"] in last:
                item["lastCommit"] = last[item["path"]]
    return JSONResponse(out)


def last_commits(hub: HubApp, repo: RepoRef, cid: str, paths: list[str]) -> dict[str, Any]:
    """path -> {id, title, date} of the newest commit (from ``cid`` back along first parents)
    whose tree changed that file, or anything under that folder. One diff per commit, so the
    cost is history x tree size whatever the number of paths."""
    st = hub.store
    todo, found = set(paths), {}
    history = st.history(repo.rtype, repo.repo_id, cid)
    for n, (c_id, c) in enumerate(history):
        parent = history[n + 1][1]["tree"] if n + 1 < len(history) else {}
        tree = c["tree"]
        changed = {p for p in tree.keys() | parent.keys() if tree.get(p) != parent.get(p)}
        touched = changed | {p[:i] for p in changed for i, ch in enumerate(p) if ch == "/"}
        for path in todo & touched:
            found[path] = {"id": c_id, "title": c["title"], "date": c["date"]}
        todo -= touched
        if not todo:
            break
    return found


def auth_check(hub: HubApp, request: Request, repo: RepoRef, ident: Identity | None) -> Response:
    """Reached only when the app's rights check passed (read, or write for ``/write``)."""
    return JSONResponse({"access": "write" if request.url.path.endswith("/write") else "read"})


def _repo_id(rtype: str, value: object, key: str) -> RepoRef:
    if not isinstance(value, str) or value.count("/") != 1:
        raise StorageError(400, f"Expected '{key}' as namespace/name")
    return repo_ref(rtype, *value.split("/"))


async def move_repo(hub: HubApp, request: Request, ident: Identity | None) -> Response:
    if ident is None:  # before a byte of the body is read
        raise StorageError(401, "You must be authenticated to move a repo")
    body = await hub.read_json(request, SMALL_BODY)
    rtype = body.get("type") or "model"
    rtype = TYPES.get(rtype, rtype)
    src = hub.canonical(_repo_id(rtype, body.get("fromRepo"), "fromRepo"))
    dst = _repo_id(rtype, body.get("toRepo"), "toRepo")
    await run_in_threadpool(hub.access.check, ident, src, True)
    hub.access.check_namespace_write(ident, dst.namespace)
    await run_in_threadpool(_move, hub, src, dst)
    return JSONResponse({"url": _url(request, dst)})


def _both_locked(hub: HubApp, a: RepoRef, b: RepoRef) -> Any:
    """Both repos' writer locks, always taken in one order (no deadlock between two calls)."""
    st = hub.store
    first, second = sorted([a, b], key=lambda r: r.key)
    stack = contextlib.ExitStack()
    stack.enter_context(st.lock(first.rtype, first.repo_id))
    if second.key != first.key:
        stack.enter_context(st.lock(second.rtype, second.repo_id))
    return stack


def _move(hub: HubApp, src: RepoRef, dst: RepoRef) -> None:
    st = hub.store
    with _both_locked(hub, src, dst):
        if src.key == dst.key:
            raise StorageError(400, "The repo already has that name")
        if st.repo_meta(src.rtype, src.repo_id) is None:
            raise StorageError(404, f"Repository Not Found: {src.repo_id}", "RepoNotFound")
        target = st.repo_dir(dst.rtype, dst.repo_id)
        taken = st.canonical_id(dst.rtype, dst.repo_id)  # another spelling of an existing repo
        if (target / "repo.json").is_file() or taken not in (dst.repo_id, src.repo_id):
            raise StorageError(409, f"A {dst.rtype} repository called {dst.repo_id} already exists")
        if target.exists():  # left by a create that crashed: start clean
            os.replace(target, st.tmp_dir / f"stale-{secrets.token_hex(4)}")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(st.repo_dir(src.rtype, src.repo_id), target)
        # The old name redirects to the new one, as on the Hub, until a repo takes that name
        # again (create and move both replace a folder that has no repo.json).
        old = st.repo_dir(src.rtype, src.repo_id)
        old.mkdir(parents=True, exist_ok=True)
        (old / MOVED).write_text(json.dumps({"to": dst.repo_id}))


def redirect(hub: HubApp, request: Request, repo: RepoRef, ident: Identity | None) -> Any:
    """A 307 to the repo's new name when ``repo`` was moved away and the caller may read the repo
    it now is (anyone else gets the usual RepoNotFound: a private repo's new name stays hidden).
    None when the repo exists or was never moved. The Location is relative, so the client's
    HEAD before a download follows it too."""
    d = hub.store.repo_dir(repo.rtype, repo.repo_id)
    if (d / "repo.json").is_file() or not (d / MOVED).is_file():
        return None
    try:
        to = repo_ref(repo.rtype, *json.loads((d / MOVED).read_text())["to"].split("/", 1))
    except (ValueError, KeyError, TypeError, StorageError):
        return None
    if hub.store.repo_meta(to.rtype, to.repo_id) is None or not hub.access.can_read(ident, to):
        return None
    segs = request.url.path.split("/")
    at = 3 if request.url.path.startswith("/api/") else (1 if repo.rtype == "model" else 2)
    git = ".git" if segs[at + 1].endswith(".git") else ""  # the LFS batch URL: ``name.git``
    segs[at : at + 2] = [quote(to.namespace, safe=""), quote(to.name, safe="") + git]
    query = f"?{request.url.query}" if request.url.query else ""
    return RedirectResponse("/".join(segs) + query, status_code=307)


async def duplicate_repo(
    hub: HubApp, request: Request, repo: RepoRef, ident: Identity | None
) -> Response:
    """The app checked that the caller may read ``repo``; the target must be theirs."""
    if ident is None:
        raise StorageError(401, "You must be authenticated to duplicate a repo")
    body = await hub.read_json(request, SMALL_BODY)
    target = body.get("repository")
    if not isinstance(target, str) or target.count("/") != 1:
        raise StorageError(400, "Expected 'repository' as namespace/name")
    dst = repo_ref(repo.rtype, *target.split("/"))
    hub.access.check_namespace_write(ident, dst.namespace)
    private = body.get("private")
    if body.get("visibility") in ("private", "public"):
        private = body["visibility"] == "private"
    await run_in_threadpool(_duplicate, hub, repo, dst, private)
    return JSONResponse({"url": _url(request, dst), "filesCopyPending": False})


def _duplicate(hub: HubApp, src: RepoRef, dst: RepoRef, private: bool | None) -> None:
    st = hub.store
    with _both_locked(hub, src, dst):  # a consistent copy: no commit lands meanwhile
        target = st.repo_dir(dst.rtype, dst.repo_id)
        if (target / "repo.json").is_file() or st.canonical_id(
            dst.rtype, dst.repo_id
        ) != dst.repo_id:
            raise StorageError(409, f"A {dst.rtype} repository called {dst.repo_id} already exists")
        meta = st.repo_meta(src.rtype, src.repo_id)
        if meta is None:
            raise StorageError(404, f"Repository Not Found: {src.repo_id}", "RepoNotFound")
        staging = st.tmp_dir / f"dup-{secrets.token_hex(4)}"
        shutil.copytree(st.repo_dir(src.rtype, src.repo_id), staging)
        refs = json.loads((staging / "refs.json").read_text())
        refs["prs"] = {}  # pull requests stay with the original
        (staging / "refs.json").write_text(json.dumps(refs, indent=1, sort_keys=True))
        meta["private"] = bool(meta.get("private")) if private is None else bool(private)
        (staging / "repo.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
        if target.exists():
            os.replace(target, st.tmp_dir / f"stale-{secrets.token_hex(4)}")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, target)


async def user_repos(hub: HubApp, request: Request, ident: Identity | None) -> Response:
    """The caller's repos of every type, with visibility and the bytes their main branch holds."""
    if ident is None:
        raise StorageError(401, "You must be authenticated to list your repos")
    return JSONResponse(await run_in_threadpool(_user_repos, hub, ident))


def _user_repos(hub: HubApp, ident: Identity) -> list[dict[str, Any]]:
    st, out = hub.store, []
    for rtype in PREFIX:
        for repo_id in st.list_repos(rtype):
            ns = repo_id.split("/", 1)[0]
            if ns != ident.user:
                continue
            try:
                meta = st.repo_meta(rtype, repo_id) or {}
                head = st.commit(rtype, repo_id, st.resolve(rtype, repo_id, "main"))
            except (StorageError, OSError, ValueError):
                continue  # being created or deleted by another process right now
            out.append(
                {
                    "id": repo_id,
                    "type": rtype,
                    "updatedAt": head["date"],
                    "visibility": "private" if meta.get("private") else "public",
                    "storage": sum(e["size"] for e in head["tree"].values()),
                    "storagePercent": 0,
                }
            )
    return out


def _url(request: Request, repo: RepoRef) -> str:
    return f"{str(request.base_url).rstrip('/')}/{PREFIX[repo.rtype]}{repo.repo_id}"
