"""Model references as users write them: ``org/name``, ``org/name@revision`` or a local folder.

A reference is a frozen, hashable value that prints back exactly as parsed, so it can key caches,
lineage nodes and recipes. No I/O happens here except checking whether a local path exists.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .errors import InvalidReferenceError

# A Hub repo id: optional namespace, then a name; letters, digits, '-', '_', '.'; no '--' or '..'
# and no leading/trailing '-' or '.' (the Hub's own rules, see huggingface_hub validators).
_REPO_ID = re.compile(r"^(?:[\w][\w.\-]{0,95}/)?[\w][\w.\-]{0,95}$")


@dataclass(frozen=True, order=True)
class ModelRef:
    """Where a model comes from: a Hub repo at an optional revision, or a local folder.

    Examples:
        >>> ModelRef.parse("org/expert@v1")
        ModelRef(repo_id='org/expert', revision='v1', path=None)
        >>> str(ModelRef.parse("org/expert@v1"))
        'org/expert@v1'
    """

    repo_id: str | None = None
    revision: str | None = None
    path: str | None = None

    def __post_init__(self) -> None:
        if (self.repo_id is None) == (self.path is None):
            raise InvalidReferenceError(
                "A model reference needs exactly one of a repo id or a path."
            )
        if self.path is not None and self.revision is not None:
            raise InvalidReferenceError(
                f"A local folder has no revision: {self.path!r}@{self.revision!r}. "
                "Pin a revision only for Hub repos."
            )

    @classmethod
    def parse(cls, text: str | Path | ModelRef) -> ModelRef:
        """Parse ``org/name[@rev]`` or an existing folder (``./x``, ``/abs/x``, ``~/x``, ``x``)."""
        if isinstance(text, ModelRef):
            return text
        if isinstance(text, Path):
            return cls(path=str(text.expanduser().resolve()))
        raw = str(text).strip()
        if not raw:
            raise InvalidReferenceError(
                "Empty model reference: give 'org/name[@revision]' or a folder."
            )
        local = Path(raw).expanduser()
        if raw.startswith((".", "/", "~")) or local.is_dir():
            if not local.is_dir():
                raise InvalidReferenceError(
                    f"Local model folder {raw!r} does not exist. Check the path, or give a Hub id "
                    "like 'org/name@revision'."
                )
            return cls(path=str(local.resolve()))
        repo_id, sep, revision = raw.partition("@")
        if sep and not revision:
            raise InvalidReferenceError(
                f"Missing revision after '@' in {raw!r}: write 'org/name@main' or drop the '@'."
            )
        if (
            not _REPO_ID.match(repo_id)
            or "--" in repo_id
            or ".." in repo_id
            or repo_id.endswith((".", "-"))
        ):
            raise InvalidReferenceError(
                f"{repo_id!r} is not a Hub repo id nor an existing folder. Write 'org/name' "
                "(letters, digits, '-', '_', '.'), optionally '@revision'."
            )
        return cls(repo_id=repo_id, revision=revision or None)

    @property
    def is_local(self) -> bool:
        return self.path is not None

    @property
    def name(self) -> str:
        """A short display name: the repo's last part or the folder's name."""
        if self.repo_id is not None:
            return self.repo_id.split("/")[-1]
        return Path(self.path or "").name

    def with_revision(self, revision: str) -> ModelRef:
        if self.is_local:
            raise InvalidReferenceError(f"A local folder has no revision: {self.path!r}.")
        return ModelRef(repo_id=self.repo_id, revision=revision)

    def __str__(self) -> str:
        if self.path is not None:
            return self.path
        return f"{self.repo_id}@{self.revision}" if self.revision else str(self.repo_id)


# A revision as a URL segment: a branch, tag or sha (``refs/pr/1`` included), never ``..``.
_REVISION = re.compile(r"^[A-Za-z0-9][\w.\-/]{0,254}$")


def parse_hub_ref(text: object, *, what: str = "model") -> ModelRef:
    """Parse a Hub reference ``org/name[@revision]`` and nothing else; never looks at the disk.

    For servers that take ids from strangers (the Space): :meth:`ModelRef.parse` also accepts
    local folders, so a visitor could name ``/``, ``/etc`` or the server's model cache, and even
    a valid-looking id such as ``spaces/tests`` would be read from disk if that folder exists
    where the server runs. Here the id is checked with huggingface_hub's own
    ``validate_repo_id`` (the Hub's rules: characters, ``--``/``..``, length), must have a
    namespace, and becomes a Hub reference whatever the disk holds. The error never echoes the
    input, so it cannot reflect a server path back to the visitor.

    Args:
        text: what the visitor typed.
        what: how the error names the field (``"base model"``, ``"expert 2"``).

    Raises:
        InvalidReferenceError: not ``org/name`` or ``org/name@revision``.

    >>> parse_hub_ref("org/expert@v1")
    ModelRef(repo_id='org/expert', revision='v1', path=None)
    """
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    raw = text.strip() if isinstance(text, str) else ""
    repo_id, sep, revision = raw.partition("@")
    ok = bool(repo_id) and repo_id.count("/") == 1 and (not sep or bool(revision))
    if ok:
        try:
            validate_repo_id(repo_id)
        except HFValidationError:
            ok = False
    if ok and sep and (not _REVISION.match(revision) or ".." in revision or "//" in revision):
        ok = False
    if not ok:
        raise InvalidReferenceError(
            f"The {what} is not a Hub model id: write 'org/name' or 'org/name@revision' "
            "(letters, digits, '-', '_', '.'). Only Hub ids are accepted here; local folders "
            "work with the hub-merge CLI and Python API."
        )
    return ModelRef(repo_id=repo_id, revision=revision or None)
