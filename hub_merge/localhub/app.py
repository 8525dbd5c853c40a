"""HTTP routes of the local Hub, speaking the protocol of huggingface_hub 2.x (no Xet).

Routing is done by hand on the RAW path: the client percent-encodes revisions and tree paths as
single segments (``refs%2Fpr%2F1``), which Starlette's decoded path parameters cannot tell apart
from real slashes. See /work/shared/design/hub-protocol.md for the protocol.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..card_rules import base_model_links, check_readme, parse_front_matter
from .auth import Identity, Signer
from .storage import LFS_SUFFIXES, OID_RE, StorageError, Store, check_repo_path

TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
CHUNK = 64 * 1024
LFS_SIZE = 10 * 1024 * 1024


def _err(status: int, message: str, code: str | None = None, **headers: str) -> JSONResponse:
    h = {"X-Error-Message": message.splitlines()[0][:200], **headers}
    if code:
        h["X-Error-Code"] = code
    return JSONResponse({"error": message}, status_code=status, headers=h)


class HubApp:
    """State shared by the routes: the store, tokens, signer and test hooks."""

    def __init__(
        self,
        store: Store,
        tokens: dict[str, Identity],
        max_request_bytes: int = 64 * 1024 * 1024,
        max_lfs_bytes: int = 20 * 1024**3,
    ) -> None:
        self.store, self.tokens, self.signer = store, tokens, Signer()
        self.max_request_bytes, self.max_lfs_bytes = max_request_bytes, max_lfs_bytes
        self.fail_downloads: dict[str, int] = {}  # path in repo -> bytes to send before dropping
        self.app = Starlette(
            routes=[
                Route(
                    "/{rest:path}",
                    self.dispatch,
                    methods=["GET", "HEAD", "POST", "PUT", "DELETE"],
                )
            ]
        )

    # --- auth -----------------------------------------------------------------------------
    def identity(self, request: Request) -> Identity | None:
        auth = request.headers.get("authorization", "")
        if not auth.lower().startswith("bearer "):
            return None
        ident = self.tokens.get(auth[7:].strip())
        if ident is None:
            raise StorageError(401, "Invalid credentials in Authorization header")
        return ident

    def repo_access(
        self, request: Request, rtype: str, repo_id: str, write: bool
    ) -> Identity | None:
        ident = self.identity(request)
        meta = self.store.repo_meta(rtype, repo_id)
        owner = repo_id.split("/")[0]
        visible = meta is not None and (not meta["private"] or (ident and ident.user == owner))
        if not visible:
            raise StorageError(404, f"Repository Not Found for {rtype} {repo_id}", "RepoNotFound")
        if write:
            if ident is None:
                raise StorageError(401, "You must be authenticated to write", None)
            if not ident.can_write or ident.user != owner:
                raise StorageError(403, f"You don't have the rights to write to {repo_id}")
        return ident

    # --- dispatch -------------------------------------------------------------------------
    async def dispatch(self, request: Request) -> Response:
        raw = request.scope.get("raw_path") or request.url.path.encode()
        segs = [unquote(s) for s in raw.decode("latin-1").split("?")[0].strip("/").split("/")]
        try:
            return await self._route(request, request.method, segs)
        except StorageError as e:
            return _err(e.status, e.message, e.code)
        except ClientDisconnect:
            return Response(status_code=400)

    async def _route(self, request: Request, m: str, s: list[str]) -> Response:
        if s[:1] == ["api"]:
            if s == ["api", "whoami-v2"]:
                return self.whoami(request)
            if s == ["api", "repos", "create"] and m == "POST":
                return await self.create_repo(request)
            if s == ["api", "repos", "delete"] and m == "DELETE":
                return await self.delete_repo(request)
            if s == ["api", "validate-yaml"] and m == "POST":
                body = await self.read_json(request)
                check = check_readme(str(body.get("content", "")), body.get("repoType", "model"))
                out = {
                    "errors": [{"message": x} for x in check.errors],
                    "warnings": [{"message": x} for x in check.warnings],
                }
                return JSONResponse(out, status_code=400 if check.errors else 200)
            if len(s) == 2 and s[1] in TYPES and m == "GET":
                return self.list_repos(request, TYPES[s[1]])
            if len(s) >= 4 and s[1] in TYPES:
                rtype, repo_id, rest = TYPES[s[1]], f"{s[2]}/{s[3]}", s[4:]
                return await self.repo_api(request, m, rtype, repo_id, rest)
        if s[:1] == ["lfs-upload"] and m == "PUT" and len(s) == 5:
            return await self.lfs_put(request, s[1], f"{s[2]}/{s[3]}", s[4])
        rtype = "model"
        if s[:1] in (["datasets"], ["spaces"]):
            rtype, s = TYPES[s[0]], s[1:]
        if len(s) == 6 and s[1].endswith(".git") and s[2:] == ["info", "lfs", "objects", "batch"]:
            return await self.lfs_batch(request, rtype, f"{s[0]}/{s[1][:-4]}")
        if len(s) >= 5 and s[2] == "resolve" and m in ("GET", "HEAD"):
            rev, path = _split_rev(s[3:])
            return self.resolve(request, rtype, f"{s[0]}/{s[1]}", rev, "/".join(path))
        return _err(404, f"Not found: {request.url.path}")

    async def read_body(self, request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared and int(declared) > self.max_request_bytes:
            raise StorageError(413, f"Request too large: over {self.max_request_bytes} bytes")
        chunks, total = [], 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > self.max_request_bytes:
                raise StorageError(413, f"Request too large: over {self.max_request_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def read_json(self, request: Request) -> dict[str, Any]:
        try:
            body = json.loads(await self.read_body(request) or b"{}")
        except ValueError as e:
            raise StorageError(400, f"Malformed JSON body: {e}") from e
        if not isinstance(body, dict):
            raise StorageError(400, "JSON body must be an object")
        return body

    # --- account and repos ----------------------------------------------------------------
    def whoami(self, request: Request) -> Response:
        ident = self.identity(request)
        if ident is None:
            return _err(401, "Invalid credentials in Authorization header")
        return JSONResponse(
            {
                "type": "user",
                "name": ident.user,
                "fullname": ident.user,
                "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"role": ident.role}},
            }
        )

    async def create_repo(self, request: Request) -> Response:
        ident = self.identity(request)
        body = await self.read_json(request)
        rtype = body.get("type") or "model"
        ns = body.get("organization") or (ident.user if ident else None)
        name = body.get("name")
        if rtype not in PREFIX or not isinstance(name, str):
            raise StorageError(400, "Expected {name, organization?, type?} with a valid type")
        if ident is None:
            raise StorageError(401, "You must be authenticated to create a repo")
        if not ident.can_write or ns != ident.user:
            raise StorageError(403, f"You don't have the rights to create a repo under {ns!r}")
        repo_id = f"{ns}/{name}"
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,95}", name) or ".." in name:
            raise StorageError(400, f"Invalid repo name {name!r}")
        private = bool(body.get("private")) or body.get("visibility") == "private"
        url = f"{str(request.base_url).rstrip('/')}/{PREFIX[rtype]}{repo_id}"
        try:
            self.store.create_repo(rtype, repo_id, private, ident.user)
        except StorageError as e:
            if e.status != 409:
                raise
            # The client's exist_ok=True reads "url" from the 409 body.
            return JSONResponse({"error": e.message, "url": url}, status_code=409)
        return JSONResponse({"url": url, "name": repo_id})

    async def delete_repo(self, request: Request) -> Response:
        body = await self.read_json(request)
        rtype = body.get("type") or "model"
        ident = self.identity(request)
        ns = body.get("organization") or (ident.user if ident else "")
        repo_id = f"{ns}/{body.get('name')}"
        self.repo_access(request, rtype, repo_id, write=True)
        self.store.delete_repo(rtype, repo_id)
        return JSONResponse({})

    async def repo_api(
        self, request: Request, m: str, rtype: str, repo_id: str, rest: list[str]
    ) -> Response:
        op = rest[0] if rest else ""
        write = m in ("POST", "PUT", "DELETE") and op not in ("paths-info",)
        self.repo_access(request, rtype, repo_id, write=write)
        st = self.store
        if op == "" and m == "GET":
            return self.info(request, rtype, repo_id, "main")
        if op == "revision" and m == "GET":
            return self.info(request, rtype, repo_id, "/".join(rest[1:]))
        if op == "tree" and m == "GET":
            rev, path = _split_rev(rest[1:])
            return self.tree(request, rtype, repo_id, rev, "/".join(path))
        if op == "refs" and m == "GET":
            refs = st.refs(rtype, repo_id)

            def fmt(kind: str, prefix: str) -> list[dict[str, str]]:
                return [
                    {"name": n, "ref": f"{prefix}{n}", "targetCommit": c}
                    for n, c in sorted(refs[kind].items())
                ]

            out = {"branches": fmt("heads", "refs/heads/"), "tags": fmt("tags", "refs/tags/")}
            out.update(converts=[], pullRequests=fmt("prs", "refs/pr/"))
            return JSONResponse(out)
        if op == "commits" and m == "GET":
            cid = st.resolve(rtype, repo_id, "/".join(rest[1:]) or "main")
            return JSONResponse(
                [
                    {
                        "id": c_id,
                        "title": c["title"],
                        "message": c["message"],
                        "date": c["date"],
                        "authors": [{"user": c["author"]}],
                    }
                    for c_id, c in st.history(rtype, repo_id, cid)
                ]
            )
        if op == "preupload" and m == "POST":
            return await self.preupload(request, rtype, repo_id, "/".join(rest[1:]))
        if op == "commit" and m == "POST":
            return await self.commit(request, rtype, repo_id, "/".join(rest[1:]))
        if op == "branch" and len(rest) >= 2:
            return await self.branch(request, m, rtype, repo_id, "/".join(rest[1:]))
        if op == "tag" and len(rest) >= 2:
            return await self.tag(request, m, rtype, repo_id, "/".join(rest[1:]))
        if op == "settings" and m == "PUT":
            body = await self.read_json(request)
            if "private" in body or "visibility" in body:
                private = bool(body.get("private")) or body.get("visibility") == "private"
                st.set_private(rtype, repo_id, private)
            return JSONResponse({})
        return _err(404, f"Not found: {request.url.path}")

    # --- reading --------------------------------------------------------------------------
    def _card(self, rtype: str, repo_id: str, tree: dict[str, Any]) -> dict[str, Any] | None:
        entry = tree.get("README.md")
        if entry is None:
            return None
        try:
            return parse_front_matter(self.store.blob_path(entry["sha256"]).read_text("utf-8"))
        except (ValueError, UnicodeDecodeError):
            return None

    def repo_json(
        self, request: Request, rtype: str, repo_id: str, rev: str, full: bool, blobs: bool = False
    ) -> dict[str, Any]:
        st = self.store
        cid = st.resolve(rtype, repo_id, rev)
        commit = st.commit(rtype, repo_id, cid)
        tree, meta = commit["tree"], st.repo_meta(rtype, repo_id) or {}
        card = self._card(rtype, repo_id, tree) or {}
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
            "author": repo_id.split("/")[0],
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

    def info(self, request: Request, rtype: str, repo_id: str, rev: str) -> Response:
        blobs = request.query_params.get("blobs", "").lower() in ("1", "true")
        return JSONResponse(self.repo_json(request, rtype, repo_id, rev or "main", True, blobs))

    def list_repos(self, request: Request, rtype: str) -> Response:
        q = request.query_params
        ident = self.identity(request)
        search, author = q.get("search", "").lower(), q.get("author")
        filters = q.getlist("filter")
        full = q.get("full", "").lower() in ("1", "true") or q.get("cardData", "").lower() in (
            "1",
            "true",
        )
        expand = q.getlist("expand") + q.getlist("expand[]")
        items = []
        for repo_id in self.store.list_repos(rtype):
            meta = self.store.repo_meta(rtype, repo_id) or {}
            if meta.get("private") and (ident is None or ident.user != repo_id.split("/")[0]):
                continue
            if author and repo_id.split("/")[0] != author:
                continue
            if search and search not in repo_id.lower():
                continue
            item = self.repo_json(request, rtype, repo_id, "main", True)
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

    def tree(self, request: Request, rtype: str, repo_id: str, rev: str, path: str) -> Response:
        cid = self.store.resolve(rtype, repo_id, rev)
        tree = self.store.commit(rtype, repo_id, cid)["tree"]
        recursive = request.query_params.get("recursive", "").lower() in ("1", "true")
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        if prefix and not any(p.startswith(prefix) for p in tree):
            raise StorageError(404, f"Path {path} not found at {rev}", "EntryNotFound")
        files, dirs = [], set()
        for p, e in sorted(tree.items()):
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
        ]
        return JSONResponse(out + files)

    def resolve(self, request: Request, rtype: str, repo_id: str, rev: str, path: str) -> Response:
        self.repo_access(request, rtype, repo_id, write=False)
        cid = self.store.resolve(rtype, repo_id, rev)
        entry = self.store.commit(rtype, repo_id, cid)["tree"].get(path)
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
                return _err(416, f"Bad Range {rng!r}", **{"Content-Range": f"bytes */{size}"})
            if mt.group(1):
                start = int(mt.group(1))
                end = min(int(mt.group(2)), size - 1) if mt.group(2) else size - 1
            else:
                start = max(size - int(mt.group(2)), 0)
            if start >= size or start > end:
                return _err(416, "Range not satisfiable", **{"Content-Range": f"bytes */{size}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = end - start + 1 if size else 0
        headers["Content-Length"] = str(length)
        if request.method == "HEAD":
            return Response(status_code=status, headers=headers)
        fail_after = self.fail_downloads.pop(path, None)
        blob = self.store.blob_path(entry["sha256"])
        return StreamingResponse(
            _stream(blob, start, length, fail_after), status_code=status, headers=headers
        )

    # --- writing --------------------------------------------------------------------------
    async def preupload(self, request: Request, rtype: str, repo_id: str, rev: str) -> Response:
        body = await self.read_json(request)
        files = body.get("files")
        if not isinstance(files, list):
            raise StorageError(400, "Expected {files: [{path, sample, size}]}")
        try:
            tree = self.store.commit(rtype, repo_id, self.store.resolve(rtype, repo_id, rev))[
                "tree"
            ]
        except StorageError:
            tree = {}  # a new branch / PR: nothing to compare against
        out = []
        for f in files:
            path = check_repo_path(f.get("path") if isinstance(f, dict) else None)
            try:
                sample = base64.b64decode(f.get("sample", ""), validate=True)
            except ValueError as e:
                raise StorageError(400, f"Invalid base64 sample for {path}") from e
            size = f.get("size", 0)
            lfs = (
                path.endswith(LFS_SUFFIXES)
                or (isinstance(size, int) and size >= LFS_SIZE)
                or b"\0" in sample
            )
            existing = tree.get(path)
            item = {"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False}
            if existing is not None:
                item["oid"] = existing["sha256"] if existing["lfs"] else existing["oid"]
            out.append(item)
        return JSONResponse({"files": out, "commitOid": None})

    async def lfs_batch(self, request: Request, rtype: str, repo_id: str) -> Response:
        self.repo_access(request, rtype, repo_id, write=True)
        body = await self.read_json(request)
        if body.get("operation") != "upload" or not isinstance(body.get("objects"), list):
            raise StorageError(400, "Only the 'upload' operation with a list of objects is served")
        base = str(request.base_url).rstrip("/")
        out = []
        for obj in body["objects"]:
            oid, size = obj.get("oid"), obj.get("size")
            if not isinstance(oid, str) or not OID_RE.match(oid) or not isinstance(size, int):
                out.append(
                    {"oid": oid, "size": size, "error": {"code": 422, "message": "bad oid/size"}}
                )
                continue
            if size > self.max_lfs_bytes or size < 0:
                msg = f"Object too large: {size} > {self.max_lfs_bytes} bytes"
                out.append({"oid": oid, "size": size, "error": {"code": 422, "message": msg}})
                continue
            item: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            if not self.store.has_blob(oid, size):
                exp, sig = self.signer.sign(f"{rtype}/{repo_id}", oid, size)
                href = f"{base}/lfs-upload/{rtype}/{repo_id}/{oid}?size={size}&exp={exp}&sig={sig}"
                item["actions"] = {"upload": {"href": href, "expires_in": int(self.signer.ttl)}}
            out.append(item)
        return JSONResponse(
            {"transfer": "basic", "objects": out, "hash_algo": "sha256"},
            media_type="application/vnd.git-lfs+json",
        )

    async def lfs_put(self, request: Request, rtype: str, repo_id: str, oid: str) -> Response:
        q = request.query_params
        try:
            size, exp, sig = int(q["size"]), int(q["exp"]), q["sig"]
        except (KeyError, ValueError):
            return _err(403, "Upload link is missing its signature")
        if not self.signer.verify(f"{rtype}/{repo_id}", oid, size, exp, sig):
            return _err(403, "Upload link signature is invalid or expired; request a new batch")
        fd, tmp = self.store.temp_file()
        digest, total = hashlib.sha256(), 0
        try:
            with os.fdopen(fd, "wb") as f:
                async for chunk in request.stream():
                    total += len(chunk)
                    if total > size:
                        raise StorageError(400, f"Object is larger than its declared size {size}")
                    digest.update(chunk)
                    f.write(chunk)
            if total != size:
                raise StorageError(400, f"Object size {total} does not match declared size {size}")
            if digest.hexdigest() != oid:
                raise StorageError(400, f"Object sha256 {digest.hexdigest()} does not match {oid}")
            self.store.adopt_temp(tmp, oid)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return Response(status_code=200)

    async def commit(self, request: Request, rtype: str, repo_id: str, rev: str) -> Response:
        ident = self.repo_access(request, rtype, repo_id, write=True)
        assert ident is not None
        raw = await self.read_body(request)
        header: dict[str, Any] | None = None
        ops: list[tuple[str, dict[str, Any]]] = []
        for n, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                key, value = item["key"], item["value"]
                if not isinstance(value, dict):
                    raise TypeError
            except (ValueError, KeyError, TypeError) as e:
                raise StorageError(
                    400, f"Malformed ndjson at line {n}: expected {{key, value}}"
                ) from e
            if key == "header":
                header = value
                continue
            if key not in ("file", "lfsFile", "deletedFile", "deletedFolder"):
                raise StorageError(400, f"Unknown operation {key!r} at line {n}")
            path = check_repo_path(value.get("path"))
            if key == "file":
                try:
                    data = base64.b64decode(value.get("content", ""), validate=True)
                except ValueError as e:
                    raise StorageError(400, f"Invalid base64 content for {path}") from e
                ops.append((key, {"path": path, "data": data}))
            elif key == "lfsFile":
                oid, size = value.get("oid"), value.get("size")
                if not isinstance(oid, str) or not OID_RE.match(oid):
                    raise StorageError(400, f"Invalid LFS oid for {path}")
                if size is None and self.store.has_blob(oid):
                    size = self.store.blob_path(oid).stat().st_size
                if not isinstance(size, int) or not self.store.has_blob(oid, size):
                    raise StorageError(
                        400, f"LFS object {oid} ({size} bytes) for {path} was not uploaded"
                    )
                ops.append((key, {"path": path, "oid": oid, "size": size}))
            else:
                ops.append((key, {"path": path}))
        if header is None or not isinstance(header.get("summary", ""), str):
            raise StorageError(400, "Malformed ndjson: the first line must be a header")
        for key, value in ops:
            if key == "file" and value["path"] == "README.md":
                check = check_readme(value["data"].decode("utf-8", "replace"), rtype)
                if check.errors:
                    raise StorageError(
                        400, "Invalid metadata in README.md: " + "; ".join(check.errors)
                    )
        create_pr = request.query_params.get("create_pr") in ("1", "true")
        cid, pr = self.store.apply_commit(
            rtype,
            repo_id,
            rev or "main",
            ops,
            header.get("summary") or "Upload files",
            header.get("description") or "",
            ident.user,
            header.get("parentCommit"),
            create_pr,
        )
        base = f"{str(request.base_url).rstrip('/')}/{PREFIX[rtype]}{repo_id}"
        return JSONResponse(
            {
                "success": True,
                "commitOid": cid,
                "commitUrl": f"{base}/commit/{cid}",
                "pullRequestUrl": f"{base}/discussions/{pr}" if pr else None,
            }
        )

    async def branch(
        self, request: Request, m: str, rtype: str, repo_id: str, name: str
    ) -> Response:
        st = self.store
        if m == "POST":
            body = await self.read_json(request)
            if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_./-]*", name) or name.startswith("refs/"):
                raise StorageError(400, f"Invalid branch name {name!r}")
            with st.lock(rtype, repo_id):
                refs = st.refs(rtype, repo_id)
                if name in refs["heads"]:
                    raise StorageError(409, f"Branch {name} already exists")
                refs["heads"][name] = st.resolve(
                    rtype, repo_id, body.get("startingPoint") or "main"
                )
                st.write_refs(rtype, repo_id, refs)
            return JSONResponse({})
        if m == "DELETE":
            with st.lock(rtype, repo_id):
                refs = st.refs(rtype, repo_id)
                if name not in refs["heads"] or name == "main":
                    raise StorageError(
                        404 if name != "main" else 403, f"Cannot delete branch {name}"
                    )
                del refs["heads"][name]
                st.write_refs(rtype, repo_id, refs)
            return JSONResponse({})
        return _err(405, "Method not allowed")

    async def tag(self, request: Request, m: str, rtype: str, repo_id: str, arg: str) -> Response:
        st = self.store
        with st.lock(rtype, repo_id):
            refs = st.refs(rtype, repo_id)
            if m == "POST":
                body = await self.read_json(request)
                tag = body.get("tag")
                if not isinstance(tag, str) or not re.fullmatch(
                    r"[A-Za-z0-9_][A-Za-z0-9_.-]*", tag
                ):
                    raise StorageError(400, f"Invalid tag name {tag!r}")
                if tag in refs["tags"]:
                    raise StorageError(409, f"Tag {tag} already exists")
                refs["tags"][tag] = st.resolve(rtype, repo_id, arg)
            elif m == "DELETE":
                if arg not in refs["tags"]:
                    raise StorageError(404, f"Tag {arg} not found", "RevisionNotFound")
                del refs["tags"][arg]
            st.write_refs(rtype, repo_id, refs)
        return JSONResponse({})


def _split_rev(segs: list[str]) -> tuple[str, list[str]]:
    """First segment is the revision, unless the client sent ``refs/pr/1`` unencoded."""
    if len(segs) >= 3 and segs[0] == "refs" and segs[1] in ("pr", "heads", "tags"):
        return "/".join(segs[:3]), segs[3:]
    return (segs[0] if segs else "main"), segs[1:]


class _DropConnection(Exception):
    """Raised mid-body to make uvicorn close the socket (test hook for resumed downloads)."""


def _stream(blob: Any, start: int, length: int, fail_after: int | None) -> Callable[[], Any]:
    def gen():  # type: ignore[no-untyped-def]
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

    return gen()
