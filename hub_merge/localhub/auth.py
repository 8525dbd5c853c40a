"""Tokens, rights and signed upload links for the local Hub.

A token maps to (user, "read" | "write"). A user reads public repos and their own private ones,
and writes only under their own namespace with a write token. Tokens reach the server from a file
(``--token-file``) or the ``HUB_MERGE_HUB_TOKENS`` environment variable, so they stay out of argv
(which every local user can read with ``ps``). LFS upload links are PUT by the client WITHOUT an
Authorization header (the real Hub hands out pre-signed S3 URLs), so each href carries a
short-lived HMAC over (repo, oid, size, expiry) instead.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from .storage import REPO_NOT_FOUND, StorageError, Store
from .validation import RepoRef

ROLES = ("read", "write")
TOKENS_ENV = "HUB_MERGE_HUB_TOKENS"
_SPEC_HELP = "USER:TOKEN[:read|write], e.g. alice:hf_alice:write"


@dataclass(frozen=True)
class Identity:
    user: str
    role: str

    @property
    def can_write(self) -> bool:
        return self.role == "write"


def parse_token_spec(spec: str) -> tuple[str, Identity]:
    """``user:token:write|read`` -> (token, Identity); the role defaults to write.

    The error never repeats the spec: it holds a secret.
    """
    parts = spec.strip().split(":")
    if len(parts) == 2:
        parts.append("write")
    if len(parts) != 3 or not parts[0] or not parts[1] or parts[2] not in ROLES:
        raise ValueError(f"A token must be given as {_SPEC_HELP}")
    # As the Hub's user names (huggingface_hub's own tests use "__DUMMY_TRANSFORMERS_USER__").
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,95}", parts[0]):
        raise ValueError(f"A token's user must be a valid Hub namespace ({_SPEC_HELP})")
    if not re.fullmatch(r"[\x21-\x7e]+", parts[1]):
        raise ValueError(f"A token must be printable ASCII without spaces ({_SPEC_HELP})")
    return parts[1], Identity(parts[0], parts[2])


def parse_token_lines(text: str, source: str) -> dict[str, Identity]:
    """One spec per line (or comma-separated); blank lines and ``#`` comments are skipped."""
    table: dict[str, Identity] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0] if line.lstrip().startswith("#") else line
        for spec in (s.strip() for s in line.split(",")):
            if not spec:
                continue
            try:
                tok, ident = parse_token_spec(spec)
            except ValueError as e:
                raise ValueError(f"{source}, line {n}: {e}") from None
            table[tok] = ident
    return table


def load_tokens(
    specs: tuple[str, ...] = (), token_file: str | os.PathLike[str] | None = None
) -> dict[str, Identity]:
    """Tokens from ``$HUB_MERGE_HUB_TOKENS``, then ``token_file``, then ``specs`` (last wins)."""
    table = parse_token_lines(os.environ.get(TOKENS_ENV, ""), f"${TOKENS_ENV}")
    if token_file is not None:
        path = Path(token_file)
        try:
            text = path.read_text("utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"Cannot read the token file {path}: {type(e).__name__}") from None
        table.update(parse_token_lines(text, str(path)))
    for spec in specs:
        tok, ident = parse_token_spec(spec)
        table[tok] = ident
    return table


class Access:
    """Who is asking, and what they may see or change."""

    def __init__(self, store: Store, tokens: dict[str, Identity]) -> None:
        self.store, self.tokens = store, tokens

    def identity(self, authorization: str) -> Identity | None:
        """The caller of a request with this Authorization header; a wrong token is a 401."""
        if not authorization.lower().startswith("bearer "):
            return None
        ident = self.tokens.get(authorization[7:].strip())
        if ident is None:
            raise StorageError(401, "Invalid credentials in Authorization header")
        return ident

    def can_read(self, ident: Identity | None, repo: RepoRef) -> bool:
        meta = self.store.repo_meta(repo.rtype, repo.repo_id)
        return meta is not None and (
            not meta["private"] or (ident is not None and ident.user == repo.namespace)
        )

    def check(self, ident: Identity | None, repo: RepoRef, write: bool) -> None:
        """404 for a repo the caller may not see; 401/403 for a write they may not make."""
        if not self.can_read(ident, repo):
            raise StorageError(404, REPO_NOT_FOUND, "RepoNotFound")
        if write:
            self.check_namespace_write(ident, repo.namespace)

    def check_contributor(self, ident: Identity | None, repo: RepoRef) -> Identity:
        """A contributor: anyone with a write token who can read the repo (a pull request)."""
        if not self.can_read(ident, repo):
            raise StorageError(404, REPO_NOT_FOUND, "RepoNotFound")
        if ident is None:
            raise StorageError(401, "You must be authenticated to open a pull request")
        if not ident.can_write:
            raise StorageError(403, "A read token cannot open a pull request")
        return ident

    def check_namespace_write(self, ident: Identity | None, namespace: str) -> Identity:
        if ident is None:
            raise StorageError(401, "You must be authenticated to write")
        if not ident.can_write or ident.user != namespace:
            raise StorageError(403, f"You don't have the rights to write under {namespace!r}")
        return ident


class Signer:
    """HMAC links valid for ``ttl`` seconds; the key is random per server process."""

    def __init__(self, ttl: float = 3600.0) -> None:
        self._key = os.urandom(32)
        self.ttl = ttl

    def _mac(self, payload: str) -> str:
        return hmac.new(self._key, payload.encode(), hashlib.sha256).hexdigest()

    def sign(self, repo: str, oid: str, size: int) -> tuple[int, str]:
        exp = int(time.time() + self.ttl)
        return exp, self._mac(f"{repo}|{oid}|{size}|{exp}")

    def verify(self, repo: str, oid: str, size: int, exp: int, sig: str) -> bool:
        if exp < time.time():
            return False
        return hmac.compare_digest(self._mac(f"{repo}|{oid}|{size}|{exp}"), sig)
