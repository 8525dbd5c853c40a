"""The local Hub's ASGI app: the route table, rights checks and error replies, in one place.

Routes are Starlette routes with path parameters, matched against the RAW request path: the
client percent-encodes a revision or a tree path as one segment (``refs%2Fpr%2F1``), and a
decoded path could not tell that ``/`` from a real one (nor ``alice/..%2Fbob%2Fsecret`` from
``bob/secret``). Each segment a route captures is decoded exactly once and validated
(``validation.py``) before any handler sees it; a repo-taking route gets a ``RepoRef`` whose
namespace the rights check uses. The routes follow the endpoints ``huggingface_hub`` calls (its
``HfApi`` is the client the tests drive).
"""

from __future__ import annotations

import inspect
import re
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from . import limits, xet
from . import routes_read as read
from . import routes_repos as repos
from . import routes_write as write
from .auth import Access, Identity, Signer
from .storage import REPO_NOT_FOUND, StorageError, Store
from .validation import TYPES, RepoRef, decode_segment, header_text, repo_ref_from_path

Handler = Callable[..., Any]
WRITE_METHODS = ("POST", "PUT", "DELETE")
PR_ONLY, ALWAYS = "pr", "always"  # who else may use a write route: see HubApp._repo


def error_response(
    status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The Hub's error shape; header values are printable ASCII whatever the input was."""
    h = {"X-Error-Message": header_text(message), **(headers or {})}
    if code:
        h["X-Error-Code"] = code
    return JSONResponse({"error": message}, status_code=status, headers=h)


class HubApp:
    """State shared by the routes (store, tokens, signer, limits, test hooks) and the app."""

    def __init__(
        self,
        store: Store,
        tokens: dict[str, Identity],
        max_request_bytes: int = limits.COMMIT_BODY,
        max_lfs_bytes: int = 20 * 1024**3,
    ) -> None:
        self.store, self.signer, self.xet_tokens = store, Signer(), xet.XetTokens()
        self.access = Access(store, tokens)
        self.max_request_bytes, self.max_lfs_bytes = max_request_bytes, max_lfs_bytes
        self.fail_downloads: dict[str, int] = {}  # path in repo -> bytes to send before dropping
        self.served: dict[str, int] = {}  # "repo_id/path" -> body bytes served by resolve (tests)
        self._starlette = Starlette(
            routes=self._routes(),
            exception_handlers={
                StorageError: self._storage_error,
                ClientDisconnect: lambda req, exc: Response(status_code=400),
                404: _not_found,
                # A repo another process deleted while this request read it.
                FileNotFoundError: lambda req, exc: error_response(
                    404, "Repository Not Found (it was just deleted)", "RepoNotFound"
                ),
            },
        )
        self._starlette.router.redirect_slashes = False
        starlette = self._starlette

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            """Route on the raw path (still percent-encoded); see the module docstring."""
            if scope["type"] != "http":
                await starlette(scope, receive, send)
                return
            if scope.get("raw_path") is not None:
                scope = dict(scope, path=scope["raw_path"].decode("latin-1"), root_path="")

            request_id = secrets.token_hex(16).encode()

            async def clean_send(message: Any) -> None:
                if message["type"] == "http.response.start":
                    headers = [_clean_header(*h) for h in message["headers"]]
                    message = dict(message, headers=[*headers, (b"x-request-id", request_id)])
                await send(message)

            await starlette(scope, receive, clean_send)

        # A plain function, so uvicorn sees an ASGI 3 app (it takes bound methods for ASGI 2).
        self.app = app

    @staticmethod
    async def _storage_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StorageError)
        return error_response(exc.status, exc.message, exc.code, exc.headers)

    # --- route table ------------------------------------------------------------------------
    def _routes(self) -> list[Route]:
        api = "/api/{rtypes}/{ns}/{name}"
        routes = [
            Route("/api/whoami-v2", self._plain(_whoami), methods=["GET"]),
            Route("/api/repos/create", self._plain(write.create_repo), methods=["POST"]),
            Route("/api/repos/delete", self._plain(write.delete_repo), methods=["DELETE"]),
            Route("/api/validate-yaml", self._plain(write.validate_yaml), methods=["POST"]),
            Route("/api/repos/move", self._plain(repos.move_repo), methods=["POST"]),
            Route("/api/settings/repositories", self._plain(repos.user_repos), methods=["GET"]),
            Route("/api/{rtypes}", self._listing, methods=["GET"]),
            Route(api, self._repo(read.info), methods=["GET"]),
            Route(api + "/revision/{rev:path}", self._repo(read.info), methods=["GET"]),
            Route(api + "/tree/{rest:path}", self._repo(read.tree), methods=["GET"]),
            Route(api + "/refs", self._repo(read.refs), methods=["GET"]),
            Route(api + "/paths-info/{rev:path}", self._repo(repos.paths_info), methods=["POST"]),
            Route(api + "/auth-check", self._repo(repos.auth_check), methods=["GET"]),
            Route(api + "/auth-check/write", self._repo(repos.auth_check, True), methods=["GET"]),
            Route(api + "/duplicate", self._repo(repos.duplicate_repo), methods=["POST"]),
            Route(api + "/commits", self._repo(read.commits), methods=["GET"]),
            Route(api + "/commits/{rev:path}", self._repo(read.commits), methods=["GET"]),
            Route(
                api + "/preupload/{rev:path}",
                self._repo(write.preupload, True, contribute=PR_ONLY),
                methods=["POST"],
            ),
            Route(
                api + "/commit/{rev:path}",
                self._repo(write.commit, True, contribute=PR_ONLY),
                methods=["POST"],
            ),
            Route(
                api + "/branch/{branch:path}",
                self._repo(write.branch, True),
                methods=["POST", "DELETE"],
            ),
            Route(api + "/tag/{tag:path}", self._repo(write.tag, True), methods=["POST", "DELETE"]),
            Route(api + "/settings", self._repo(write.settings, True), methods=["PUT"]),
            Route(
                api + "/super-squash/{branch:path}",
                self._repo(write.super_squash, True),
                methods=["POST"],
            ),
            Route("/lfs-upload/{rtype}/{ns}/{name}/{oid}", self._lfs_put, methods=["PUT"]),
        ]
        # Xet uploads (xet.py): a token route per scope, then the CAS routes that token opens.
        for kind, needs_write in (("read", False), ("write", True)):
            token = self._repo(xet.token, needs_write, contribute=PR_ONLY if needs_write else None)
            for suffix in ("", "/{rev:path}"):
                routes.append(Route(f"{api}/xet-{kind}-token{suffix}", token, methods=["GET"]))
        cas = xet.CAS_PREFIX + "/{instance}/{user}/v1"
        routes += [
            Route(cas + "/chunks/{prefix}/{hash}", self._cas(xet.dedup_query), methods=["GET"]),
            Route(cas + "/xorbs/{prefix}/{hash}", self._cas(xet.head_xorb), methods=["HEAD"]),
            Route(cas + "/xorbs/{prefix}/{hash}", self._cas(xet.post_xorb), methods=["POST"]),
            Route(cas + "/shards", self._cas(xet.post_shard), methods=["POST"]),
        ]
        # Git-style URLs: no prefix for models, ``datasets/`` or ``spaces/`` for the others.
        for prefix, rtype in (("/datasets", "dataset"), ("/spaces", "space"), ("", "model")):
            batch = prefix + "/{ns}/{name}.git/info/lfs/objects/batch"
            lfs = self._repo(write.lfs_batch, True, rtype, contribute=ALWAYS)
            routes.append(Route(batch, lfs, methods=["POST"]))
            resolve = prefix + "/{ns}/{name}/resolve/{rest:path}"
            routes.append(
                Route(resolve, self._repo(read.resolve, False, rtype), methods=["GET", "HEAD"])
            )
        return routes

    def _ident(self, request: Request) -> Identity | None:
        return self.access.identity(request.headers.get("authorization", ""))

    def _plain(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            return await handler(self, request, self._ident(request))

        return endpoint

    def _cas(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        """A CAS route: its credential is a Xet token (checked by the handler), not a Hub token."""

        async def endpoint(request: Request) -> Response:
            return await handler(self, request)

        return endpoint

    def _repo(
        self,
        handler: Handler,
        write: bool = False,
        rtype: str | None = None,
        contribute: str | None = None,
    ) -> Callable[[Request], Awaitable[Response]]:
        """Wrap a handler: validate the repo id, check the caller's rights on it, then run.

        ``contribute`` lets a contributor (a write token, on a repo they can read) through a
        write route, as the Hub lets anyone open a pull request: ``PR_ONLY`` when the request
        asks for one (``create_pr=1``), ``ALWAYS`` for the LFS batch (an upload changes no ref;
        the commit that would use it is checked on its own).

        Synchronous handlers (every read) run in the thread pool.
        """
        is_async = _is_async(handler)

        async def endpoint(request: Request) -> Response:
            p = request.path_params
            kind = rtype or TYPES.get(p.get("rtypes", ""))
            if kind is None:
                raise StorageError(404, f"Unknown repo type {decode_segment(p['rtypes'])!r}")
            repo = await run_in_threadpool(
                self.canonical, repo_ref_from_path(kind, p["ns"], p["name"])
            )
            ident = self._ident(request)
            moved = await run_in_threadpool(repos.redirect, self, request, repo, ident)
            if moved is not None:
                return moved
            wants_pr = request.query_params.get("create_pr") in ("1", "true")
            if write and (contribute == ALWAYS or (contribute == PR_ONLY and wants_pr)):
                await run_in_threadpool(self.access.check_contributor, ident, repo)
            else:
                await run_in_threadpool(self.access.check, ident, repo, write)
            if is_async:
                return await handler(self, request, repo, ident)
            return await run_in_threadpool(handler, self, request, repo, ident)

        return endpoint

    def canonical(self, repo: RepoRef) -> RepoRef:
        """The repo under its stored spelling (ids are case-insensitive, as on the Hub): rights
        are then checked against the namespace as it is stored, whatever the request's case."""
        stored = self.store.canonical_id(repo.rtype, repo.repo_id)
        return repo if stored == repo.repo_id else RepoRef(repo.rtype, *stored.split("/", 1))

    async def _listing(self, request: Request) -> Response:
        rtype = TYPES.get(request.path_params["rtypes"])
        if rtype is None:
            raise StorageError(404, "Not found")
        return await run_in_threadpool(read.list_repos, self, request, rtype, self._ident(request))

    async def _lfs_put(self, request: Request) -> Response:
        """No Authorization header here: the signed link is the credential (see auth.Signer)."""
        p = request.path_params
        if p["rtype"] not in TYPES.values():
            raise StorageError(404, "Not found")
        repo: RepoRef = repo_ref_from_path(p["rtype"], p["ns"], p["name"])
        return await write.lfs_put(self, request, repo, decode_segment(p["oid"]))

    # --- bodies ---------------------------------------------------------------------------
    async def read_body(self, request: Request, limit: int) -> bytes:
        """The body, at most ``limit`` bytes (and never over the server's own cap)."""
        return await limits.read_body(request, min(limit, self.max_request_bytes))

    async def read_json(self, request: Request, limit: int = limits.SMALL_BODY) -> dict[str, Any]:
        """A JSON object body of at most ``limit`` bytes, its shape bounded (``limits``)."""
        raw = await self.read_body(request, limit)
        return await run_in_threadpool(limits.parse_object, raw)


MAX_HEADER = 1024
# A repo route with a one-segment id (``/api/models/gpt2/...``, ``/gpt2/resolve/...``): the Hub's
# legacy canonical ids, which no repo here has (every repo is ``namespace/name``).
_BARE_REPO_ID = re.compile(
    r"^/(api/(models|datasets|spaces)/[^/]+(/.*)?|(datasets/|spaces/)?[^/]+/resolve/.*)$"
)


async def _not_found(request: Request, exc: Exception) -> Response:
    """No route matched: a repo-shaped path says which repo is missing, as the Hub does, so
    ``repo_exists`` / ``file_exists`` answer False instead of raising."""
    if _BARE_REPO_ID.match(request.url.path) and request.url.path != "/api/models":
        return error_response(404, REPO_NOT_FOUND, "RepoNotFound")
    return error_response(404, "Not found")


def _clean_header(name: bytes, value: bytes) -> tuple[bytes, bytes]:
    """Every header value leaves as printable ASCII, trimmed and at most ``MAX_HEADER`` bytes:
    h11 drops the connection rather than send one with control characters or a trailing space."""
    text = "".join(c if 32 <= ord(c) < 127 else "?" for c in value.decode("latin-1"))
    return name, text[:MAX_HEADER].strip().encode("ascii")


def _is_async(fn: Handler) -> bool:
    return inspect.iscoroutinefunction(fn)


async def _whoami(hub: HubApp, request: Request, ident: Identity | None) -> Response:
    if ident is None:
        raise StorageError(401, "Invalid credentials in Authorization header")
    return JSONResponse(
        {
            "type": "user",
            "name": ident.user,
            "fullname": ident.user,
            "orgs": [],
            "auth": {"type": "access_token", "accessToken": {"role": ident.role}},
        }
    )
