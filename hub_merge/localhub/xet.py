"""Enough of the Xet CAS protocol for huggingface_hub's uploader (hf_xet) to push files here.

huggingface_hub uploads every LFS file through Xet whenever hf_xet is installed, with no fallback a
server can trigger, so a Hub that only speaks LFS cannot take an ``upload_folder`` from a default
install. The flow (https://huggingface.co/docs/xet/upload-protocol): the client asks the Hub for a
write token (``xet-write-token``: CAS URL, access token, expiry), chunks each file, asks the CAS
whether chunks exist (``GET /v1/chunks/...``: always "no" here), uploads xorbs (``POST
/v1/xorbs/default/<hash>``: concatenated compressed chunks), then one shard (``POST
/v1/shards``) whose file-info section says how each file is rebuilt from xorb chunk ranges and
carries the file's sha256. The commit that follows names each file by that sha256 as an LFS
pointer - so the shard route rebuilds each file, checks its sha256, and records it exactly as an
LFS upload would (blob store + the repo's LFS ledger). Downloads stay plain HTTP: the resolve route
sends no Xet headers, so the client never asks the CAS for a reconstruction.

The binary formats (xorb chunk headers, shard layout, the byte order of hashes) are parsed by hand:
no Python library reads them. Xorbs are stored per user (``xet/xorbs/<user>/<hash>``), so one
user's upload under a hash can neither be read nor shadowed by another's; this server does not
compute xorb hashes (keyed BLAKE3 trees), it checks the rebuilt files' sha256 instead.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import re
import secrets
import struct
import time
from pathlib import Path
from typing import TYPE_CHECKING

import lz4.frame
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .auth import Identity
from .storage import StorageError, Store
from .validation import RepoRef, check_revision, decode_segment

if TYPE_CHECKING:
    from .app import HubApp

CAS_PREFIX = "/xet-cas"
TOKEN_TTL = 3600
MIB = 1024 * 1024
XORB_BODY = 80 * MIB  # a xorb holds at most 64 MiB of chunks, plus its footer
SHARD_BODY = 64 * MIB  # the client's own cap on a shard
MAX_CHUNK = 128 * 1024  # hf_xet's largest chunk (uncompressed)
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_SHARD_TAG = b"HFRepoMetaData\x00" + bytes(
    [85, 105, 103, 69, 106, 123, 129, 87, 131, 165, 189, 217, 92, 205, 209, 74, 169]
)
_XORB_FOOTER = b"XETBLOB"
_FLAG_VERIFICATION, _FLAG_METADATA_EXT = 1 << 31, 1 << 30
_BOOKEND = b"\xff" * 32


def bad(message: str) -> StorageError:
    return StorageError(400, message, "XetMalformed")


def hash_hex(raw: bytes) -> str:
    """A Xet hash as the protocol spells it: four little-endian u64s, each printed as 16 hex
    digits (so each 8-byte group reads reversed); sha256 values in shards are stored the same way."""
    return "".join(raw[i : i + 8][::-1].hex() for i in range(0, 32, 8))


# --- access tokens ----------------------------------------------------------------------------
class XetTokens:
    """Short-lived CAS tokens bound to (user, repo, scope), HMAC-signed with a per-process key;
    never the user's Hub token (hf_xet keeps it in memory and sends it to the CAS URL)."""

    def __init__(self, ttl: int = TOKEN_TTL) -> None:
        self._key, self.ttl = os.urandom(32), ttl

    def _mac(self, payload: str) -> str:
        return hmac.new(self._key, payload.encode(), hashlib.sha256).hexdigest()

    def issue(self, user: str, repo: RepoRef, scope: str) -> tuple[str, int]:
        exp = int(time.time()) + self.ttl
        payload = f"{scope}|{exp}|{user}|{repo.key}"
        body = base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")
        return f"xet_{body}.{self._mac(payload)}", exp

    def check(self, authorization: str, write: bool) -> tuple[str, RepoRef]:
        """(user, repo) of a valid token; 401 without one, 403 for a read token on a write."""
        token = authorization[7:].strip() if authorization.lower().startswith("bearer ") else ""
        try:
            body, mac = token.removeprefix("xet_").rsplit(".", 1)
            payload = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode()
            scope, exp_text, user, key = payload.split("|", 3)
            rtype, ns, name = key.split("/", 2)
            exp = int(exp_text)
        except (ValueError, UnicodeDecodeError):
            raise StorageError(
                401, "A Xet CAS request needs the token from xet-write-token"
            ) from None
        if not hmac.compare_digest(self._mac(payload), mac) or exp < time.time():
            raise StorageError(401, "Xet token is invalid or expired; request a new one")
        if write and scope != "write":
            raise StorageError(403, "A Xet read token cannot upload; request xet-write-token")
        return user, RepoRef(rtype, ns, name)


async def token(hub: HubApp, request: Request, repo: RepoRef, ident: Identity | None) -> Response:
    """``xet-{read,write}-token``: the Hub's answer (JSON body and ``X-Xet-*`` headers), with
    this server's CAS routes as the CAS URL. The app checked the rights (write for a write token)."""
    rev = request.path_params.get("rev")
    if rev:
        check_revision(decode_segment(rev))  # validated like any revision; a token covers all
    scope = "write" if "/xet-write-token" in request.url.path else "read"
    user = ident.user if ident is not None else "-"  # no user is named "-"
    access, exp = hub.xet_tokens.issue(user, repo, scope)
    # hf_xet keeps a deduplication cache per CAS URL and skips uploading xorbs it has seen there:
    # a URL per data folder and user keeps it from skipping xorbs this store (or this user's
    # space in it) does not have - a new data folder on the same port, another user's upload.
    instance = await run_in_threadpool(instance_id, hub.store)
    cas = f"{str(request.base_url).rstrip('/')}{CAS_PREFIX}/{instance}/{user}"
    headers = {
        "X-Xet-Cas-Url": cas,
        "X-Xet-Access-Token": access,
        "X-Xet-Token-Expiration": str(exp),
    }
    return JSONResponse({"casUrl": cas, "accessToken": access, "exp": exp}, headers=headers)


def instance_id(store: Store) -> str:
    """A random id made once per data folder (shared by the server processes using it)."""
    path = store.root / "xet" / "instance"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(8))
    for _ in range(100):  # another process may be between creating and writing it
        text = path.read_text().strip()
        if text:
            return text
        time.sleep(0.01)
    raise StorageError(500, f"{path} is empty; delete it and retry")


# --- CAS routes -------------------------------------------------------------------------------
def _caller(hub: HubApp, request: Request, write: bool) -> tuple[str, RepoRef]:
    """The token's (user, repo); the user in the CAS URL must be the token's."""
    user, repo = hub.xet_tokens.check(request.headers.get("authorization", ""), write)
    if request.path_params.get("user") != user:
        raise StorageError(403, "This Xet token belongs to another user's CAS URL")
    return user, repo


def _xorb_path(store: Store, user: str, xorb: str) -> Path:
    return store.root / "xet" / "xorbs" / user / xorb[:2] / xorb


def _hash_param(request: Request) -> str:
    h = request.path_params["hash"].lower()
    if not _HEX64.match(h):
        raise bad("A Xet hash is 64 hex digits")
    return h


async def dedup_query(hub: HubApp, request: Request) -> Response:
    """Global deduplication: nothing is shared between uploads here, so every chunk is new."""
    _caller(hub, request, write=False)
    return JSONResponse({"error": "No deduplication data"}, status_code=404)


async def head_xorb(hub: HubApp, request: Request) -> Response:
    user, _ = _caller(hub, request, write=False)
    found = _xorb_path(hub.store, user, _hash_param(request)).is_file()
    return Response(status_code=200 if found else 404)


async def post_xorb(hub: HubApp, request: Request) -> Response:
    user, _ = _caller(hub, request, write=True)
    xorb = _hash_param(request)
    data = await hub.read_body(request, XORB_BODY)
    await run_in_threadpool(xorb_chunks, data)  # refuse a malformed xorb now, not at the shard
    path = _xorb_path(hub.store, user, xorb)
    inserted = not path.is_file()
    if inserted:
        path.parent.mkdir(parents=True, exist_ok=True)
        await run_in_threadpool(hub.store.write_atomic, path, data)
    return JSONResponse({"was_inserted": inserted})


async def post_shard(hub: HubApp, request: Request) -> Response:
    user, repo = _caller(hub, request, write=True)
    data = await hub.read_body(request, SHARD_BODY)
    files = await run_in_threadpool(shard_files, data)
    for sha, entries in files:
        await run_in_threadpool(_store_file, hub, user, repo, sha, entries)
    return JSONResponse({"result": 1})  # SyncPerformed


# --- formats ----------------------------------------------------------------------------------
Segment = tuple[str, int, int, int]  # xorb hash, first chunk, end chunk (exclusive), bytes


def shard_files(data: bytes) -> list[tuple[str, list[Segment]]]:
    """The file-info section of a shard: each file's sha256 and its xorb segments.

    Layout (docs/xet/shard): a 48-byte header (tag, version, footer size), then 48-byte records:
    per file a header (file hash, flags, entry count),
    its entries (xorb hash, flags, bytes, chunk range), a verification record per entry when flag
    bit 31 is set, and a metadata-ext record (the sha256) when bit 30 is; an all-0xFF hash ends it.
    """
    if len(data) < 48 or data[:32] != _SHARD_TAG:
        raise bad("Not a Xet shard (wrong magic number)")
    footer_size = struct.unpack_from("<Q", data, 40)[0]
    if footer_size > len(data) - 48:  # 0 in an uploaded shard: the client sends no footer
        raise bad("Xet shard footer size is out of range")
    out: list[tuple[str, list[Segment]]] = []
    pos = 48  # the file-info section follows the header
    while True:
        if pos < 48 or pos + 48 > len(data):
            raise bad("Xet shard file-info section runs past the shard")
        fhash, flags, n = data[pos : pos + 32], *struct.unpack_from("<II", data, pos + 32)
        pos += 48
        if fhash == _BOOKEND:
            return out
        records = n * (2 if flags & _FLAG_VERIFICATION else 1) + (
            1 if flags & _FLAG_METADATA_EXT else 0
        )
        if pos + 48 * records > len(data):
            raise bad("Xet shard file entry count runs past the shard")
        segs: list[Segment] = []
        for i in range(n):
            p = pos + 48 * i
            xorb = hash_hex(data[p : p + 32])
            nbytes, start, end = struct.unpack_from("<III", data, p + 36)
            if end <= start:
                raise bad("Xet shard segment has an empty chunk range")
            segs.append((xorb, start, end, nbytes))
        if not flags & _FLAG_METADATA_EXT:
            raise bad("Xet shard file has no sha256 (metadata extension); upgrade hf_xet")
        p = pos + 48 * (records - 1)
        out.append((hash_hex(data[p : p + 32]), segs))
        pos += 48 * records


def xorb_chunks(data: bytes) -> list[tuple[int, int, int, int]]:
    """(offset of data, compressed size, scheme, uncompressed size) of each chunk of a xorb:
    8-byte headers (version, 3-byte LE compressed size, scheme, 3-byte LE size) each followed by
    its data, until the footer (``XETBLOB``) or the end."""
    out, pos = [], 0
    while pos < len(data) and data[pos : pos + 7] != _XORB_FOOTER:
        if pos + 8 > len(data):
            raise bad("Xet xorb ends inside a chunk header")
        h = data[pos : pos + 8]
        csize = int.from_bytes(h[1:4], "little")
        usize = int.from_bytes(h[5:8], "little")
        if h[0] != 0 or h[4] > 2 or usize > MAX_CHUNK or csize > 2 * MAX_CHUNK:
            raise bad(f"Xet xorb chunk {len(out)} has an unknown version, scheme or size")
        if pos + 8 + csize > len(data):
            raise bad(f"Xet xorb chunk {len(out)} runs past the xorb")
        out.append((pos + 8, csize, h[4], usize))
        pos += 8 + csize
    return out


def decompress(raw: bytes, scheme: int, size: int) -> bytes:
    """One chunk's bytes: stored (0), an LZ4 frame (1), or an LZ4 frame of the bytes grouped by
    position mod 4 (2, "ByteGrouping4"), which is regrouped here."""
    try:
        # At most size + 1 bytes: a forged frame cannot expand past its header's claim.
        out = raw if scheme == 0 else lz4.frame.LZ4FrameDecompressor().decompress(raw, size + 1)
    except RuntimeError:
        raise bad("Xet chunk is not a valid LZ4 frame") from None
    if len(out) != size:
        raise bad(f"Xet chunk decompressed to {len(out)} bytes, its header says {size}")
    if scheme == 2:
        regrouped, start = bytearray(size), 0
        for k in range(4):
            n = size // 4 + (1 if k < size % 4 else 0)
            regrouped[k::4] = out[start : start + n]
            start += n
        out = bytes(regrouped)
    return out


def _store_file(hub: HubApp, user: str, repo: RepoRef, sha: str, segs: list[Segment]) -> None:
    """Rebuild one file from the user's xorbs into a temp file, check its sha256, then store it
    and grant it to the repo as an LFS upload does; nothing is kept when any check fails."""
    st = hub.store
    total = sum(s[3] for s in segs)
    if total > hub.max_lfs_bytes:
        raise StorageError(413, f"File of {total} bytes exceeds this server's limit")
    if st.repo_has_lfs(repo.rtype, repo.repo_id, sha, total):
        return
    fd, tmp = st.temp_file()
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as f:
            cached: tuple[str, bytes, list[tuple[int, int, int, int]]] | None = None
            for xorb, start, end, nbytes in segs:
                if cached is None or cached[0] != xorb:
                    path = _xorb_path(st, user, xorb)
                    if not path.is_file():
                        raise bad(f"Xet shard names xorb {xorb}, which was not uploaded")
                    raw = path.read_bytes()
                    cached = (xorb, raw, xorb_chunks(raw))
                _, raw, chunks = cached
                if end > len(chunks):
                    raise bad(f"Xet shard names chunks past the end of xorb {xorb}")
                written = 0
                for off, csize, scheme, usize in chunks[start:end]:
                    piece = decompress(raw[off : off + csize], scheme, usize)
                    digest.update(piece)
                    f.write(piece)
                    written += len(piece)
                if written != nbytes:
                    raise bad(
                        f"Xet shard segment of xorb {xorb} claims {nbytes} bytes, has {written}"
                    )
            f.flush()
            os.fsync(f.fileno())
        if digest.hexdigest() != sha:
            raise bad(f"Rebuilt file sha256 {digest.hexdigest()} does not match the shard's {sha}")
        if st.has_blob(sha, total):
            os.unlink(tmp)
        else:
            st.adopt_temp(tmp, sha)
        st.grant_lfs(repo.rtype, repo.repo_id, sha)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
