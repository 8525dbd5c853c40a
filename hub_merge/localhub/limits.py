"""Bounds on what one request may make the local Hub read, parse and hold.

Every body is read only after the route and the caller's rights were checked, and only up to
its route's limit (a declared ``Content-Length`` over it is refused before a byte is read).
JSON is parsed only after a scan in C-speed regexes has bounded its nesting and its number of
values: ``json.loads`` of 16 MB of ``[],[],...`` would otherwise build ~8 million lists
(hundreds of MB), and ``'[' * 100000`` would raise ``RecursionError`` (a 500). Commit bodies
(NDJSON) are read line by line, each line bounded, so a commit of many regular files never
sits in memory whole.

The limits admit what the Hub admits: regular files just under 10 MB (above that the local Hub,
like the Hub, asks for LFS) and a commit of many of them (issue 26: 12 files of 9 MB each).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request

from .storage import StorageError

KIB, MIB = 1024, 1024 * 1024
# Per-route body limits, in bytes.
SMALL_BODY = 64 * KIB  # create/delete a repo, settings, branch, tag
LIST_BODY = 8 * MIB  # preupload and LFS batch: the client sends at most 256 files per request
YAML_BODY = 8 * MIB  # validate-yaml gets the whole README; only its front matter is parsed
COMMIT_LINE = 16 * MIB  # one NDJSON line: a regular file (< 10 MB) base64-encoded, and its keys
COMMIT_BODY = 4 * 1024 * MIB  # a whole commit; lines are processed as they arrive
# JSON shape limits.
MAX_DEPTH = 32
MAX_VALUES = 100_000

_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"')
_NOT_BRACKET = re.compile(rb"[^\[\]{}]++")


def _too_large(cap: int) -> StorageError:
    return StorageError(413, f"Request body too large: this route takes at most {cap} bytes")


def declared_length(request: Request, cap: int) -> None:
    """Refuse a body whose declared length is over ``cap`` before reading any of it."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise _too_large(cap)


async def read_body(request: Request, cap: int) -> bytes:
    """The whole body, refused (413) as soon as it passes ``cap`` bytes."""
    declared_length(request, cap)
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > cap:
            raise _too_large(cap)
        chunks.append(chunk)
    return b"".join(chunks)


async def read_lines(request: Request, line_cap: int, cap: int) -> AsyncIterator[list[bytearray]]:
    """The body's lines, in groups as they arrive, each line at most ``line_cap`` bytes."""
    declared_length(request, cap)
    buf, total = bytearray(), 0  # a bytearray grows in place: no quadratic copying
    async for chunk in request.stream():
        total += len(chunk)
        if total > cap:
            raise _too_large(cap)
        buf += chunk
        if b"\n" not in chunk:
            if len(buf) > line_cap:
                raise StorageError(413, f"A line of the request is over {line_cap} bytes")
            continue
        *lines, buf = buf.split(b"\n")  # bytearrays, which json and base64 read as bytes
        if len(buf) > line_cap or any(len(line) > line_cap for line in lines):
            raise StorageError(413, f"A line of the request is over {line_cap} bytes")
        yield lines
    if buf:
        if len(buf) > line_cap:
            raise StorageError(413, f"A line of the request is over {line_cap} bytes")
        yield [buf]


def check_json_shape(
    raw: bytes | bytearray, max_depth: int = MAX_DEPTH, max_values: int = MAX_VALUES
) -> None:
    """Refuse JSON nested deeper than ``max_depth`` or holding more than ``max_values`` values.

    Strings are blanked first (so brackets and commas inside them do not count), then the
    brackets and commas left are counted: all in the regex engine, linear in the body's size.
    """
    skeleton = _STRING.sub(b'""', raw)
    values = skeleton.count(b",") + skeleton.count(b"[") + skeleton.count(b"{")
    if values > max_values:
        raise StorageError(400, f"JSON body has more than {max_values} values")
    depth = 0
    for c in _NOT_BRACKET.sub(b"", skeleton):
        depth += 1 if c in b"[{" else -1
        if depth > max_depth:
            raise StorageError(400, f"JSON body is nested deeper than {max_depth} levels")


def parse_json(raw: bytes | bytearray, what: str = "JSON body") -> Any:
    """``json.loads`` behind :func:`check_json_shape`; any failure is a 400, never a 500."""
    check_json_shape(raw)
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise StorageError(400, f"Malformed {what}: {str(e)[:120]}") from e


def parse_object(raw: bytes) -> dict[str, Any]:
    body = parse_json(raw or b"{}")
    if not isinstance(body, dict):
        raise StorageError(400, "JSON body must be an object")
    return body
