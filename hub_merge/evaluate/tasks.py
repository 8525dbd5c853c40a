"""Task files: small labelled JSONL sets (prompt, answer, optional choices), checked line by line."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, TaskFileError


@dataclass(frozen=True)
class Example:
    """One labelled example. ``answer`` is a choice's text when ``choices`` is given."""

    prompt: str
    answer: str
    choices: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Task:
    """A named list of examples. ``digest`` hashes the examples used, for cache keys."""

    name: str
    examples: tuple[Example, ...]
    path: Path | None = None

    @property
    def digest(self) -> str:
        h = hashlib.sha256()
        for ex in self.examples:
            h.update(json.dumps([ex.prompt, ex.answer, ex.choices], ensure_ascii=False).encode())
        return h.hexdigest()[:16]

    def head(self, limit: int | None) -> Task:
        """The task restricted to its first ``limit`` examples (all when None)."""
        if limit is None or limit >= len(self.examples):
            return self
        if limit < 1:
            raise ConfigError(f"limit must be a positive number of examples; got {limit}.")
        return Task(self.name, self.examples[:limit], self.path)


def _parse_example(raw: str, path: Path, lineno: int) -> Example:
    where = f"{path}, line {lineno}"
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as err:
        raise TaskFileError(
            f"{where}: not valid JSON ({err.msg}). Each line must be one JSON object."
        ) from None
    if not isinstance(obj, dict):
        raise TaskFileError(f"{where}: expected a JSON object with 'prompt' and 'answer'.")
    prompt, answer, choices = obj.get("prompt"), obj.get("answer"), obj.get("choices")
    if not isinstance(prompt, str) or not prompt:
        raise TaskFileError(f"{where}: 'prompt' is missing or not a non-empty string.")
    if choices is not None:
        if (
            not isinstance(choices, list)
            or len(choices) < 2
            or not all(isinstance(c, str) for c in choices)
        ):
            raise TaskFileError(f"{where}: 'choices' must be a list of at least two strings.")
        if isinstance(answer, int) and not isinstance(answer, bool):
            if not 0 <= answer < len(choices):
                raise TaskFileError(
                    f"{where}: answer index {answer} is outside the {len(choices)} choices."
                )
            answer = choices[answer]
        elif answer not in choices:
            raise TaskFileError(
                f"{where}: 'answer' {answer!r} is not one of the choices {choices}."
            )
        return Example(prompt, answer, tuple(choices))
    if not isinstance(answer, str) or not answer:
        raise TaskFileError(f"{where}: 'answer' is missing or not a non-empty string.")
    return Example(prompt, answer)


def load_task(path: str | Path, *, name: str | None = None, limit: int | None = None) -> Task:
    """Read a task JSONL file (one ``{"prompt", "answer"[, "choices"]}`` object per line).

    Raises:
        TaskFileError: the file is missing, empty, or a line is malformed (the line is named).
    """
    path = Path(path)
    if not path.is_file():
        raise TaskFileError(
            f"Task file {path} does not exist: pass a JSONL file of prompt/answer lines."
        )
    examples: list[Example] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if raw.strip():
                examples.append(_parse_example(raw, path, lineno))
    if not examples:
        raise TaskFileError(f"Task file {path} is empty: it needs at least one prompt/answer line.")
    task = Task(name or path.stem, tuple(examples), path)
    return task.head(limit)


def load_tasks(paths: Iterable[str | Path], *, limit: int | None = None) -> list[Task]:
    """Load several task files; names (file stems) must be unique."""
    tasks = [load_task(p, limit=limit) for p in paths]
    names = [t.name for t in tasks]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise TaskFileError(f"Task names must be unique; {dupes} appear twice. Rename the files.")
    if not tasks:
        raise TaskFileError("No task files given: pass at least one JSONL file.")
    return tasks
