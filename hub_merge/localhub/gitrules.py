"""A repo's ``.gitignore`` and ``.gitattributes``, matched as git matches them, for preupload.

The Hub answers ``preupload`` with ``shouldIgnore`` (from the repo's ``.gitignore``, or the one
the client sends) and the upload mode (LFS where ``.gitattributes`` says ``filter=lfs``), so
``upload_folder`` skips what the user excluded and stores as LFS what the repo asks for. No
library for git's pattern rules is a dependency here, so the subset the Hub's users write is
translated by hand: ``*``, ``?``, ``[...]``, ``**``, a leading or inner ``/`` anchoring the
pattern, a trailing ``/`` for folders only, ``!`` re-including (``.gitignore`` only), and an
excluded folder excluding everything in it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_RULES = 2000  # a rules file with more lines than this is read up to here


@dataclass(frozen=True)
class _Rule:
    regex: re.Pattern[str]
    negate: bool
    dir_only: bool
    attrs: tuple[str, ...] = ()


def _translate(pattern: str) -> str:
    out, i, n = [], 0, len(pattern)
    while i < n:
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("/**", i) and i + 3 == n:
            out.append("/.*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 2 :]:
            end = pattern.index("]", i + 2)
            body = pattern[i + 1 : end]
            body = "^" + body[1:] if body.startswith("!") else body
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end + 1
        elif pattern[i] == "\\" and i + 1 < n:
            out.append(re.escape(pattern[i + 1]))
            i += 2
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out)


def _rule(pattern: str, negate: bool, attrs: tuple[str, ...] = ()) -> _Rule | None:
    dir_only = pattern.endswith("/")
    pattern = pattern.rstrip("/")
    if not pattern:
        return None
    anchored = "/" in pattern
    body = _translate(pattern.lstrip("/"))
    regex = re.compile(("^" if anchored else "^(?:.*/)?") + body + "$")
    return _Rule(regex, negate, dir_only, attrs)


def _lines(text: str) -> list[str]:
    out = []
    for line in text.splitlines()[:MAX_RULES]:
        line = line.rstrip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


class GitIgnore:
    """``.gitignore`` rules; :meth:`ignored` says whether a file path is excluded."""

    def __init__(self, text: str) -> None:
        self.rules = []
        for line in _lines(text):
            negate = line.startswith("!")
            rule = _rule(line[1:] if negate else line.removeprefix("\\"), negate)
            if rule is not None:
                self.rules.append(rule)

    def ignored(self, path: str) -> bool:
        if not self.rules:
            return False
        parts = path.split("/")
        for i in range(1, len(parts) + 1):
            candidate, is_dir = "/".join(parts[:i]), i < len(parts)
            state = None
            for rule in self.rules:
                if (is_dir or not rule.dir_only) and rule.regex.match(candidate):
                    state = not rule.negate
            if state and is_dir:
                return True  # git never looks inside an excluded folder
            if not is_dir:
                return bool(state)
        return False


class GitAttributes:
    """``.gitattributes`` lines; :meth:`lfs` says whether a path is stored with ``filter=lfs``
    (True), explicitly not (False), or the file does not say (None)."""

    def __init__(self, text: str) -> None:
        self.rules = []
        for line in _lines(text):
            pattern, *attrs = line.split()
            rule = _rule(pattern, False, tuple(attrs))
            if rule is not None and not rule.dir_only:
                self.rules.append(rule)

    def lfs(self, path: str) -> bool | None:
        verdict = None
        for rule in self.rules:
            if not rule.regex.match(path):
                continue
            for attr in rule.attrs:
                if attr == "filter=lfs":
                    verdict = True
                elif attr.startswith("filter=") or attr in ("-filter", "!filter"):
                    verdict = False
        return verdict
