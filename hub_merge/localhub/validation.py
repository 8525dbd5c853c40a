"""Every name the local Hub takes from a request is checked here, and only here.

Routes match on the RAW path (see ``app.RawPathRouting``), so a percent-encoded ``/`` stays inside
its segment; each segment is then decoded exactly once and checked. A repo id is checked with
huggingface_hub's own ``validate_repo_id`` (the rules ``create_repo`` applies: ASCII letters,
digits, ``-_.``, no ``--`` / ``..``, 96 characters at most per part, no ``.git`` ending), so the
server accepts exactly the ids the client would send. Anything else is a 400, never a 200 or 5xx.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from urllib.parse import unquote

from huggingface_hub import CommitOperationDelete
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from .storage import StorageError

TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
# First path segments with a meaning of their own: never a namespace.
RESERVED_NAMESPACES = frozenset({"api", "datasets", "spaces", "models", "lfs-upload"})
MAX_SEGMENT = 96
MAX_PATH = 1024
BRANCH_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,95}(/[A-Za-z0-9_][A-Za-z0-9_.-]{0,95})*")
TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,95}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# A branch or tag named like a commit sha (full, or a prefix the server resolves) could stand
# in for the commit it names: refused, so a sha pin cannot be re-pointed.
SHA_NAME_RE = re.compile(r"[0-9a-fA-F]{7,40}")


@dataclass(frozen=True)
class RepoRef:
    """A validated repo: its type (``model`` / ``dataset`` / ``space``), namespace and name."""

    rtype: str
    namespace: str
    name: str

    @property
    def repo_id(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def key(self) -> str:
        return f"{self.rtype}/{self.repo_id}"


def decode_segment(raw: str) -> str:
    """Percent-decode one raw path segment, once; malformed UTF-8 is refused, not replaced."""
    try:
        return unquote(raw, errors="strict")
    except UnicodeDecodeError as e:
        raise StorageError(400, f"Invalid percent-encoding in {safe_text(raw)}") from e


def check_part(value: object, what: str) -> str:
    """One namespace or repo name, already decoded: the Hub's characters and length."""
    if not isinstance(value, str) or not value:
        raise StorageError(400, f"Invalid {what}: it must be a non-empty string")
    if len(value) > MAX_SEGMENT:
        raise StorageError(400, f"Invalid {what}: longer than {MAX_SEGMENT} characters")
    if "/" in value:
        raise StorageError(400, f"Invalid {what} {safe_text(value)}: it may not contain '/'")
    try:
        validate_repo_id(value)
    except HFValidationError as e:
        raise StorageError(
            400,
            f"Invalid {what} {safe_text(value)}: use letters, digits, '-', '_' or '.', not "
            "starting or ending with '-' or '.', without '--' or '..'",
        ) from e
    if what == "namespace" and value.lower() in RESERVED_NAMESPACES:
        raise StorageError(400, f"Invalid namespace {value!r}: the name is reserved")
    return value


def repo_ref(rtype: str, namespace: object, name: object) -> RepoRef:
    """Validated (type, namespace, name); the single entry point for every repo id."""
    if rtype not in PREFIX:
        raise StorageError(400, f"Invalid repo type {safe_text(str(rtype))}")
    return RepoRef(rtype, check_part(namespace, "namespace"), check_part(name, "repo name"))


def repo_ref_from_path(rtype: str, raw_ns: str, raw_name: str) -> RepoRef:
    """The repo named by two raw path segments."""
    return repo_ref(rtype, decode_segment(raw_ns), decode_segment(raw_name))


# Unicode categories refused in a path: controls (C0 and C1, e.g. U+0085), format characters
# (U+202E right-to-left override, zero-width spaces), line and paragraph separators, and lone
# surrogates (which cannot even be written as UTF-8).
BAD_PATH_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
# The Hub answers 422 Unprocessable Entity for a path it refuses (huggingface_hub's own
# test_create_file_with_relative_path checks that status).
PATH_REFUSED = 422


def check_repo_path(path: object) -> str:
    """A file path inside a repo, as huggingface_hub's own rules have it, and nothing that could
    escape the repo, hide its real name or mean different things to different readers.

    The client's rules are applied by the client's own code (``CommitOperationDelete`` runs its
    path check: no ``..``, no ``.git`` or ``.cache`` folder, whose files a ``local_dir`` download
    would write into git's or huggingface_hub's own metadata); the rest is checked here.
    """
    if not isinstance(path, str) or not path or len(path) > MAX_PATH:
        raise StorageError(
            PATH_REFUSED, "Invalid path: it must be a non-empty string of at most 1024 chars"
        )
    if path.startswith("/") or "\\" in path:
        raise StorageError(
            PATH_REFUSED, f"Invalid path {safe_text(path)}: no absolute paths or backslashes"
        )
    if any(unicodedata.category(c) in BAD_PATH_CATEGORIES for c in path):
        raise StorageError(
            PATH_REFUSED,
            f"Invalid path {safe_text(path)}: no control, format (e.g. U+202E) or line "
            "separator characters",
        )
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise StorageError(
            PATH_REFUSED, f"Invalid path {safe_text(path)}: no empty, '.' or '..' segments"
        )
    try:
        CommitOperationDelete(path_in_repo=path)
    except ValueError as e:
        raise StorageError(
            PATH_REFUSED,
            f"Invalid path {safe_text(path)}: huggingface_hub forbids it (no '.git' or '.cache' "
            "folders)",
        ) from e
    return path


def check_revision(rev: str) -> str:
    """A revision as the client sends it (a branch, tag, ``refs/...`` or sha): printable, short."""
    if not rev or len(rev) > 256 or _CONTROL.search(rev) or "\\" in rev:
        raise StorageError(400, f"Invalid revision {safe_text(rev)}")
    if any(p in ("", ".", "..") for p in rev.split("/")):
        raise StorageError(400, f"Invalid revision {safe_text(rev)}")
    return rev


def _not_sha_like(name: str, what: str) -> None:
    if SHA_NAME_RE.fullmatch(name):
        raise StorageError(
            400,
            f"Invalid {what} name {safe_text(name)}: 7 to 40 hex digits read as a commit sha; "
            "pick a name with other characters",
        )


def check_branch(name: str) -> str:
    if not BRANCH_RE.fullmatch(name) or name.startswith("refs/") or ".." in name:
        raise StorageError(400, f"Invalid branch name {safe_text(name)}")
    _not_sha_like(name, "branch")
    return name


def check_tag(tag: object) -> str:
    if not isinstance(tag, str) or not TAG_RE.fullmatch(tag) or ".." in tag:
        raise StorageError(400, f"Invalid tag name {safe_text(str(tag))}")
    _not_sha_like(tag, "tag")
    return tag


def split_rev(raw_segments: list[str]) -> tuple[str, str]:
    """(revision, path) from the raw segments after ``resolve`` / ``tree``.

    The client encodes the revision as one segment (``refs%2Fpr%2F1``); an unencoded
    ``refs/pr/1`` is accepted too. Each segment is decoded once.
    """
    segs = raw_segments
    if len(segs) >= 3 and segs[0] == "refs" and segs[1] in ("pr", "heads", "tags"):
        rev, rest = "/".join(segs[:3]), segs[3:]
    else:
        rev, rest = (decode_segment(segs[0]) if segs else "main"), segs[1:]
    return check_revision(rev), "/".join(decode_segment(s) for s in rest)


def safe_text(value: str, limit: int = 120) -> str:
    """A printable-ASCII rendering of user input for messages and headers."""
    text = ascii(value)[1:-1]
    return f"'{text[:limit]}...'" if len(text) > limit else f"'{text}'"


def header_text(message: str, limit: int = 200) -> str:
    """One line of printable ASCII, at most ``limit`` characters, without leading or trailing
    spaces: h11 refuses a header value with control characters or surrounding whitespace, and
    drops the connection instead of answering."""
    line = message.splitlines()[0] if message else ""
    return "".join(c if 32 <= ord(c) < 127 else "?" for c in line)[:limit].strip()
