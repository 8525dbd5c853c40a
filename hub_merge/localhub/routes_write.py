"""Routes of the local Hub that change something: repos, settings, uploads, commits, refs.

Each handler reads its body on the event loop, then does the work (JSON and base64 decoding,
YAML checks, hashing, disk writes) in Starlette's thread pool. Rights are checked by the app on
the validated repo id before a handler runs; the store serialises writers per repo across
processes.
"""

from __future__ import annotations

import base64
import hashlib
import os
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..card_rules import check_readme
from .auth import Identity
from .commits import CommitBody
from .gitrules import GitAttributes, GitIgnore
from .limits import COMMIT_BODY, COMMIT_LINE, LIST_BODY, YAML_BODY, read_lines
from .storage import GITATTRIBUTES, OID_RE, StorageError
from .validation import (
    PREFIX,
    RepoRef,
    check_branch,
    check_repo_path,
    check_revision,
    check_tag,
    decode_segment,
    repo_ref,
)

if TYPE_CHECKING:
    from .app import HubApp

LFS_SIZE = 10 * 1024 * 1024
FLUSH_BYTES = 1024 * 1024  # LFS bytes are hashed and written off the loop in chunks this big


def _rev(request: Request, name: str = "rev") -> str:
    raw = request.path_params.get(name) or ""
    return check_revision(decode_segment(raw)) if raw else "main"


def _url(request: Request, repo: RepoRef) -> str:
    return f"{str(request.base_url).rstrip('/')}/{PREFIX[repo.rtype]}{repo.repo_id}"


# --- account and repos ------------------------------------------------------------------------
async def create_repo(hub: HubApp, request: Request, ident: Identity | None) -> Response:
    if ident is None:  # before a byte of the body is read
        raise StorageError(401, "You must be authenticated to create a repo")
    body = await hub.read_json(request)
    repo = repo_ref(
        body.get("type") or "model", body.get("organization") or ident.user, body.get("name")
    )
    hub.access.check_namespace_write(ident, repo.namespace)
    private = bool(body.get("private")) or body.get("visibility") == "private"
    url = _url(request, repo)
    try:
        await run_in_threadpool(
            hub.store.create_repo, repo.rtype, repo.repo_id, private, ident.user
        )
    except StorageError as e:
        if e.status != 409:
            raise
        # The client's exist_ok=True reads "url" from the 409 body.
        return JSONResponse({"error": e.message, "url": url}, status_code=409)
    return JSONResponse({"url": url, "name": repo.repo_id})


async def delete_repo(hub: HubApp, request: Request, ident: Identity | None) -> Response:
    if ident is None:  # before a byte of the body is read
        raise StorageError(401, "You must be authenticated to delete a repo")
    body = await hub.read_json(request)
    repo = repo_ref(
        body.get("type") or "model", body.get("organization") or ident.user, body.get("name")
    )
    repo = await run_in_threadpool(hub.canonical, repo)
    await run_in_threadpool(hub.access.check, ident, repo, True)
    await run_in_threadpool(hub.store.delete_repo, repo.rtype, repo.repo_id)
    return JSONResponse({})


async def settings(
    hub: HubApp, request: Request, repo: RepoRef, ident: Identity | None
) -> Response:
    body = await hub.read_json(request)
    if "private" in body or "visibility" in body:
        private = bool(body.get("private")) or body.get("visibility") == "private"
        await run_in_threadpool(hub.store.set_private, repo.rtype, repo.repo_id, private)
    return JSONResponse({})


async def validate_yaml(hub: HubApp, request: Request, ident: Identity | None) -> Response:
    body = await hub.read_json(request, limit=YAML_BODY)
    content = body.get("content", "")
    if not isinstance(content, str):
        raise StorageError(400, "Expected {content: str, repoType?}")
    check = await run_in_threadpool(check_readme, content, body.get("repoType") or "model")
    out = {
        "errors": [{"message": x} for x in check.errors],
        "warnings": [{"message": x} for x in check.warnings],
    }
    return JSONResponse(out, status_code=400 if check.errors else 200)


# --- uploads ----------------------------------------------------------------------------------
async def preupload(
    hub: HubApp, request: Request, repo: RepoRef, ident: Identity | None
) -> Response:
    rev = _rev(request)
    body = await hub.read_json(request, limit=LIST_BODY)
    return await run_in_threadpool(_preupload, hub, repo, rev, body)


def _preupload(hub: HubApp, repo: RepoRef, rev: str, body: dict[str, Any]) -> Response:
    """Upload modes as the Hub chooses them: LFS where the repo's ``.gitattributes`` says
    ``filter=lfs`` (or for binary or large files), ignored where its ``.gitignore`` (or the
    ``gitIgnore`` the client sends) excludes the path."""
    files = body.get("files")
    if not isinstance(files, list):
        raise StorageError(400, "Expected {files: [{path, sample, size}]}")
    st = hub.store
    try:
        tree = st.commit(repo.rtype, repo.repo_id, st.resolve(repo.rtype, repo.repo_id, rev))
        entries = tree["tree"]
        attributes = _text_in(hub, entries, ".gitattributes")
    except StorageError:
        entries, attributes = {}, GITATTRIBUTES  # a new branch / PR: the default rules
    sent = body.get("gitIgnore")
    ignore = GitIgnore(sent if isinstance(sent, str) else _text_in(hub, entries, ".gitignore"))
    attrs = GitAttributes(attributes)
    out = []
    for f in files:
        path = check_repo_path(f.get("path") if isinstance(f, dict) else None)
        try:
            sample = base64.b64decode(f.get("sample", ""), validate=True)
        except (ValueError, TypeError) as e:
            raise StorageError(400, f"Invalid base64 sample for {path}") from e
        size = f.get("size", 0)
        lfs = attrs.lfs(path)
        if lfs is None:
            lfs = (isinstance(size, int) and size >= LFS_SIZE) or b"\0" in sample
        existing = entries.get(path)
        item = {
            "path": path,
            "uploadMode": "lfs" if lfs else "regular",
            "shouldIgnore": ignore.ignored(path),
        }
        if existing is not None:
            item["oid"] = existing["sha256"] if existing["lfs"] else existing["oid"]
        out.append(item)
    return JSONResponse({"files": out, "commitOid": None})


def _text_in(hub: HubApp, entries: dict[str, Any], name: str) -> str:
    """A small text file of the tree (``.gitignore``, ``.gitattributes``); '' when absent."""
    entry = entries.get(name)
    if entry is None or entry["size"] > 1024 * 1024:
        return ""
    return hub.store.blob_path(entry["sha256"]).read_bytes().decode("utf-8", "replace")


async def lfs_batch(
    hub: HubApp, request: Request, repo: RepoRef, ident: Identity | None
) -> Response:
    body = await hub.read_json(request, limit=LIST_BODY)
    if body.get("operation") != "upload" or not isinstance(body.get("objects"), list):
        raise StorageError(400, "Only the 'upload' operation with a list of objects is served")
    base = str(request.base_url).rstrip("/")
    return await run_in_threadpool(_lfs_batch, hub, repo, base, body["objects"])


def _lfs_batch(hub: HubApp, repo: RepoRef, base: str, objects: list[Any]) -> Response:
    """Per repo: an object is "present" only if THIS repo holds it, else the client uploads it
    (and so proves it has the bytes); the disk still stores each blob once."""
    out = []
    for obj in objects:
        oid = obj.get("oid") if isinstance(obj, dict) else None
        size = obj.get("size") if isinstance(obj, dict) else None
        if not isinstance(oid, str) or not OID_RE.match(oid) or not isinstance(size, int):
            out.append({"oid": str(oid)[:64], "error": {"code": 422, "message": "bad oid/size"}})
            continue
        if size > hub.max_lfs_bytes or size < 0:
            msg = f"Object too large: {size} > {hub.max_lfs_bytes} bytes"
            out.append({"oid": oid, "size": size, "error": {"code": 422, "message": msg}})
            continue
        item: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
        if not hub.store.repo_has_lfs(repo.rtype, repo.repo_id, oid, size):
            exp, sig = hub.signer.sign(repo.key, oid, size)
            href = f"{base}/lfs-upload/{repo.key}/{oid}?size={size}&exp={exp}&sig={sig}"
            item["actions"] = {"upload": {"href": href, "expires_in": int(hub.signer.ttl)}}
        out.append(item)
    return JSONResponse(
        {"transfer": "basic", "objects": out, "hash_algo": "sha256"},
        media_type="application/vnd.git-lfs+json",
    )


async def lfs_put(hub: HubApp, request: Request, repo: RepoRef, oid: str) -> Response:
    q = request.query_params
    try:
        size, exp, sig = int(q["size"]), int(q["exp"]), q["sig"]
    except (KeyError, ValueError):
        raise StorageError(403, "Upload link is missing its signature") from None
    if not OID_RE.match(oid) or not hub.signer.verify(repo.key, oid, size, exp, sig):
        raise StorageError(403, "Upload link signature is invalid or expired; request a new batch")
    st = hub.store
    fd, tmp = st.temp_file()
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as f:
            total, buf = 0, []
            async for chunk in request.stream():
                total += len(chunk)
                if total > size:
                    raise StorageError(400, f"Object is larger than its declared size {size}")
                buf.append(chunk)
                if sum(map(len, buf)) >= FLUSH_BYTES:
                    await run_in_threadpool(_hash_and_write, f, digest, b"".join(buf))
                    buf = []
            await run_in_threadpool(_hash_and_write, f, digest, b"".join(buf))
            await run_in_threadpool(os.fsync, f.fileno())
        if total != size:
            raise StorageError(400, f"Object size {total} does not match declared size {size}")
        if digest.hexdigest() != oid:
            raise StorageError(400, f"Object sha256 {digest.hexdigest()} does not match {oid}")
        if st.has_blob(oid, size):
            os.unlink(tmp)
        else:
            st.adopt_temp(tmp, oid)
        await run_in_threadpool(st.grant_lfs, repo.rtype, repo.repo_id, oid)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return Response(status_code=200)


def _hash_and_write(f: Any, digest: Any, data: bytes) -> None:
    digest.update(data)
    f.write(data)


# --- commits and refs -------------------------------------------------------------------------
async def commit(hub: HubApp, request: Request, repo: RepoRef, ident: Identity | None) -> Response:
    """Lines are parsed and their files stored as they arrive (see ``commits``)."""
    assert ident is not None  # the app checked write rights
    rev = _rev(request)
    create_pr = request.query_params.get("create_pr") in ("1", "true")
    body = CommitBody(hub.store, repo)
    cap = min(COMMIT_BODY, hub.max_request_bytes)
    async for lines in read_lines(request, COMMIT_LINE, cap):
        await run_in_threadpool(body.feed, lines)
    cid, pr = await run_in_threadpool(_commit, hub, repo, ident, rev, body, create_pr)
    base = _url(request, repo)
    return JSONResponse(
        {
            "success": True,
            "commitOid": cid,
            "commitUrl": f"{base}/commit/{cid}",
            "pullRequestUrl": f"{base}/discussions/{pr}" if pr else None,
        }
    )


def _commit(
    hub: HubApp, repo: RepoRef, ident: Identity, rev: str, body: CommitBody, create_pr: bool
) -> tuple[str, str | None]:
    title, description, parent = body.summary()
    return hub.store.apply_commit(
        repo.rtype,
        repo.repo_id,
        rev,
        body.ops,
        title,
        description,
        ident.user,
        parent,
        create_pr,
        card=body.card(),
    )


async def branch(hub: HubApp, request: Request, repo: RepoRef, ident: Identity | None) -> Response:
    name = check_branch(decode_segment(request.path_params["branch"]))
    st = hub.store
    if request.method == "POST":
        body = await hub.read_json(request)
        start = body.get("startingPoint") or "main"
        if not isinstance(start, str):
            raise StorageError(400, "startingPoint must be a revision string")
        start = check_revision(start)

        def create() -> None:
            with st.editing_refs(repo.rtype, repo.repo_id) as refs:
                if name in refs["heads"]:
                    raise StorageError(409, f"Reference refs/heads/{name} already exists")
                refs["heads"][name] = st.resolve(repo.rtype, repo.repo_id, start)

        await run_in_threadpool(create)
        return JSONResponse({})

    def delete() -> None:
        with st.editing_refs(repo.rtype, repo.repo_id) as refs:
            if name == "main":
                raise StorageError(403, "Cannot delete refs/heads/main: it is the default branch")
            if name not in refs["heads"]:
                raise StorageError(404, f"Invalid rev id: {name}", "RevisionNotFound")
            del refs["heads"][name]

    await run_in_threadpool(delete)
    return JSONResponse({})


async def tag(hub: HubApp, request: Request, repo: RepoRef, ident: Identity | None) -> Response:
    arg = decode_segment(request.path_params["tag"])
    st = hub.store
    if request.method == "POST":
        rev = check_revision(arg)
        body = await hub.read_json(request)
        # As the Hub: a missing revision is named before a bad tag name.
        await run_in_threadpool(st.resolve, repo.rtype, repo.repo_id, rev)
        name = check_tag(body.get("tag"))

        def create() -> None:
            with st.editing_refs(repo.rtype, repo.repo_id) as refs:
                if name in refs["tags"]:
                    raise StorageError(409, f"Reference refs/tags/{name} already exists")
                refs["tags"][name] = st.resolve(repo.rtype, repo.repo_id, rev)

        await run_in_threadpool(create)
        return JSONResponse({})
    name = check_tag(arg)

    def delete() -> None:
        with st.editing_refs(repo.rtype, repo.repo_id) as refs:
            if name not in refs["tags"]:
                raise StorageError(404, f"Tag {name} not found", "RevisionNotFound")
            del refs["tags"][name]

    await run_in_threadpool(delete)
    return JSONResponse({})


async def super_squash(
    hub: HubApp, request: Request, repo: RepoRef, ident: Identity | None
) -> Response:
    """One commit on ``branch`` holding its head's files, with no parent (history dropped)."""
    assert ident is not None  # the app checked write rights
    name = check_revision(decode_segment(request.path_params["branch"]))
    body = await hub.read_json(request)
    message = body.get("message") or f"Super-squash branch '{name}'"
    if not isinstance(message, str):
        raise StorageError(400, "message must be a string")
    cid = await run_in_threadpool(
        hub.store.squash, repo.rtype, repo.repo_id, name, message, ident.user
    )
    return JSONResponse({"commitOid": cid})
