"""What one visitor may make the Space do: caps set by the server's configuration.

Every cap has a safe default and an environment variable (``HUB_MERGE_SPACE_<NAME>``, e.g.
``HUB_MERGE_SPACE_MAX_PROMPT_CHARS=8000``) so a Space owner with a bigger machine can raise it.
Each check runs before the work it bounds: a task file's size before it is read, a prompt's
characters before it is tokenised, its tokens before a model sees it, a strategy's settings
before the search starts. Refusals are one line naming the file (its base name, never a server
path), the line and the cap.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from hub_merge.errors import ConfigError, TaskFileError

ENV_PREFIX = "HUB_MERGE_SPACE_"

# Integer strategy settings that size the work, and the limit each obeys (a SpaceLimits field).
SIZE_SETTINGS = {
    "generations": "max_generations",
    "population": "max_population",
    "k": "max_population",
    "max_steps": "max_generations",
    "patience": "max_generations",
    "layer_groups": "max_population",
    "steps": "max_train_steps",
    "train_batch_size": "max_population",
    "grad_accum": "max_population",
    "max_rows": "max_rows",
    "max_length": "max_prompt_tokens",
    "teacher_cache_mb": "max_teacher_cache_mb",
    "checkpoint_every": "max_train_steps",
}


@dataclass(frozen=True)
class SpaceLimits:
    """Caps on one visitor's work (defaults fit a free CPU Space with small models)."""

    max_prompt_chars: int = 4000
    max_answer_chars: int = 1000
    max_prompt_tokens: int = 1024
    max_answer_tokens: int = 256
    max_rows: int = 256  # rows per task (uploaded or built in)
    max_file_bytes: int = 2 * 1024 * 1024  # one uploaded task file
    max_task_files: int = 8
    max_candidates: int = 8
    max_budget: int = 200  # evaluations per search, baselines included
    max_strategies: int = 4  # strategies in one compare (the Compare tab)
    max_population: int = 32
    max_generations: int = 50
    max_train_steps: int = 200
    max_teacher_cache_mb: int = 1024
    max_search_seconds: int = 1800  # wall time of one search request
    max_sessions: int = 32  # browser tabs with a folder on the server at once
    session_ttl_seconds: int = 12 * 3600  # an idle tab's folder is deleted after this long

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> SpaceLimits:
        """The defaults, each overridden by ``HUB_MERGE_SPACE_<FIELD>`` when set."""
        env = os.environ if environ is None else environ
        values: dict[str, int] = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is None:
                continue
            if not raw.strip().isdigit() or int(raw) < 1:
                raise ConfigError(f"{ENV_PREFIX}{f.name.upper()} must be a positive integer.")
            values[f.name] = int(raw)
        return dataclasses.replace(cls(), **values)

    # --- checks --------------------------------------------------------------------------------

    def check_search(self, settings: dict[str, Any], budget: int | None, n_candidates: int) -> int:
        """Refuse settings over the caps; returns the budget to use (the cap when none given)."""
        if n_candidates > self.max_candidates:
            raise ConfigError(
                f"{n_candidates} candidates is over this Space's limit of {self.max_candidates}."
            )
        for key, value in settings.items():
            cap_name = SIZE_SETTINGS.get(key)
            if cap_name is None or value is None:
                continue
            cap = getattr(self, cap_name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"Setting {key!r} must be a whole number; got {value!r}.")
            if value > cap:
                raise ConfigError(f"Setting {key!r} = {value} is over this Space's limit of {cap}.")
        if budget is None or budget <= 0:
            return self.max_budget
        if budget > self.max_budget:
            raise ConfigError(
                f"A budget of {budget} evaluations is over this Space's limit of {self.max_budget}."
            )
        return budget

    def check_compare(
        self,
        strategies: list[str],
        settings: dict[str, Any],
        budget: int | None,
        n_candidates: int,
    ) -> int:
        """Refuse a compare over the caps: too many strategies, a strategy's settings over the
        caps, or a total budget over ``max_budget`` (shared by the strategies). Returns the
        total budget to use (the cap when none given)."""
        if not strategies:
            raise ConfigError("Pick at least one strategy to compare.")
        if len(strategies) > self.max_strategies:
            raise ConfigError(
                f"{len(strategies)} strategies is over this Space's limit of "
                f"{self.max_strategies} per compare."
            )
        total = self.check_search({}, budget, n_candidates)
        for name in strategies:
            self.check_search(dict(settings.get(name) or {}), total, n_candidates)
        return total

    def check_rows(self, n: int, what: str) -> int:
        if n > self.max_rows:
            raise ConfigError(f"{what} = {n} is over this Space's limit of {self.max_rows} rows.")
        return n

    def check_task_file(self, path: Path, name: str) -> None:
        """An uploaded JSONL task within the caps: size, rows, and each prompt's and answer's
        characters, all before anything is tokenised. Errors name ``name``, the upload's own
        file name, never ``path`` (a server folder)."""
        size = path.stat().st_size
        if size > self.max_file_bytes:
            raise TaskFileError(
                f"{name} is {size} bytes; this Space takes task files of at most "
                f"{self.max_file_bytes} bytes."
            )
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise TaskFileError(f"{name} is not UTF-8 text; upload JSONL.") from None
        rows = 0
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            rows += 1
            if rows > self.max_rows:
                raise TaskFileError(
                    f"{name} has more than {self.max_rows} rows, this Space's limit per task."
                )
            try:
                obj = json.loads(line)
            except (ValueError, RecursionError) as err:
                raise TaskFileError(
                    f"{name}, line {lineno}: not valid JSON ({type(err).__name__}). Each line "
                    'must be one {"prompt": ..., "answer": ...} object.'
                ) from None
            if not isinstance(obj, dict):
                continue  # the task loader names what is wrong with the line
            self._check_chars(obj.get("prompt"), self.max_prompt_chars, name, lineno, "prompt")
            for answer in [obj.get("answer"), *(obj.get("choices") or [])][:64]:
                self._check_chars(answer, self.max_answer_chars, name, lineno, "answer")

    @staticmethod
    def _check_chars(value: Any, cap: int, name: str, lineno: int, what: str) -> None:
        if isinstance(value, str) and len(value) > cap:
            raise TaskFileError(
                f"{name}, line {lineno}: the {what} is {len(value)} characters; this Space "
                f"takes at most {cap}."
            )

    def check_tokens(self, tokenizer: Any, tasks: list[tuple[str, list[tuple[str, str]]]]) -> None:
        """Prompts and answers within the token caps (their characters were checked first,
        so tokenising them is bounded). ``tasks``: (task name, [(prompt, answer)])."""
        for name, rows in tasks:
            for i, (prompt, answer) in enumerate(rows, 1):
                for text, cap, what in (
                    (prompt, self.max_prompt_tokens, "prompt"),
                    (answer, self.max_answer_tokens, "answer"),
                ):
                    n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
                    if n > cap:
                        raise TaskFileError(
                            f"Task {name!r}, row {i}: the {what} is {n} tokens; this Space takes "
                            f"at most {cap}."
                        )
