"""Tokens and signed upload links for the local Hub.

A token maps to (user, "read" | "write"). A user reads public repos and their own private ones,
and writes only under their own namespace with a write token. LFS upload links are PUT by the
client WITHOUT an Authorization header (the real Hub hands out pre-signed S3 URLs), so each href
carries a short-lived HMAC over (repo, oid, size, expiry) instead.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from dataclasses import dataclass

ROLES = ("read", "write")


@dataclass(frozen=True)
class Identity:
    user: str
    role: str

    @property
    def can_write(self) -> bool:
        return self.role == "write"


def parse_token_spec(spec: str) -> tuple[str, Identity]:
    """``user:token:write|read`` -> (token, Identity); the role defaults to write."""
    parts = spec.split(":")
    if len(parts) == 2:
        parts.append("write")
    if len(parts) != 3 or not parts[0] or not parts[1] or parts[2] not in ROLES:
        raise ValueError(
            "A token must be given as USER:TOKEN[:read|write], e.g. alice:hf_alice:write"
        )
    return parts[1], Identity(parts[0], parts[2])


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
