"""Per-task scores cached by a candidate's recipe hash, so nothing is scored twice (even resumed)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ScoreCache:
    """Per-task scores keyed by a candidate's recipe hash; persisted atomically when ``path`` is set.

    Keys should also cover the evaluation settings (see ``Evaluator.key``) so a cache is never
    reused for a different task set or metric.
    """

    path: Path | None = None
    entries: dict[str, dict[str, float]] = field(default_factory=dict)
    hits: int = 0
    misses: int = 0

    def __post_init__(self) -> None:
        if self.path is not None:
            self.path = Path(self.path)
            if self.path.is_file():
                try:
                    self.entries = {
                        k: dict(v) for k, v in json.loads(self.path.read_text()).items()
                    }
                except (json.JSONDecodeError, AttributeError, TypeError, ValueError) as err:
                    from ..errors import SearchStateError

                    raise SearchStateError(
                        f"Score cache {self.path} is corrupt ({err}); delete it to re-score."
                    ) from err

    def get(self, key: str) -> dict[str, float] | None:
        found = self.entries.get(key)
        if found is None:
            self.misses += 1
            return None
        self.hits += 1
        return dict(found)

    def put(self, key: str, scores: Mapping[str, float]) -> None:
        self.entries[key] = {k: float(v) for k, v in scores.items()}
        self.save()

    def save(self) -> None:
        if self.path is None:
            return
        from ..atomic import atomic_write_json

        atomic_write_json(self.path, self.entries)  # an interrupt never leaves half a cache

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, key: object) -> bool:
        return key in self.entries
