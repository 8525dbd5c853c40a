"""The run folder: a search's state after every generation, so it can be resumed or inspected.

Layout of ``RUN/``::

    state.json         settings, their fingerprint, status, last finished generation
    scores.json        score cache: candidate key -> per-task raw dev scores (after every score)
    test_scores.json   the same for the held-out test rows (winner and baselines only)
    kinship.json       kinship cache: "hashA|hashB" (sorted) -> value
    family_tree.json   the lineage of every node (hub_merge.lineage.FamilyTree)
    fitness.png        best/top fitness by generation
    family_tree.png    the family tree, winner highlighted
    winner/            the materialised winner

Every file is written to a temporary name and renamed, so an interrupt never leaves half a file.
A resumed run replays the search from the caches: nothing is re-evaluated or re-measured.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_json
from ..errors import SearchStateError
from ..evaluate import ScoreCache
from ..lineage import FamilyTree

STATE_VERSION = 1


def fingerprint(settings: dict[str, Any]) -> str:
    """Hash of the settings that determine a search's results."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[
        :16
    ]


def folder_fingerprint(folder: str | Path) -> str:
    """A content fingerprint of a local model folder, so a retrained folder is scored again.

    Covers every file's name, size and mtime, the full text of the small JSON configs, and each
    safetensors header (tensor names, shapes, dtypes and byte offsets). Hashing every weight
    would cost a full read of the model per run; a retrain rewrites the files (new mtimes and,
    almost always, new headers), which this catches.
    """
    root = Path(folder)
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root)
        if rel.parts[0] in (".cache", ".git") or rel.name.startswith("."):
            continue
        stat = path.stat()
        h.update(f"{rel.as_posix()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        if path.suffix == ".json" and stat.st_size < 1_000_000:
            h.update(path.read_bytes())
        elif path.suffix == ".safetensors" and stat.st_size >= 8:
            with path.open("rb") as fh:
                n = int.from_bytes(fh.read(8), "little")
                h.update(fh.read(min(n, 100_000_000)))
    return h.hexdigest()[:32]


def write_json(path: Path, data: Any) -> None:
    atomic_write_json(path, data)


@dataclass
class KinshipCache:
    """Kinship values keyed by the unordered pair of recipe hashes; persisted atomically."""

    path: Path | None = None
    entries: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.path is not None and Path(self.path).is_file():
            try:
                self.entries = {
                    k: float(v) for k, v in json.loads(Path(self.path).read_text()).items()
                }
            except (json.JSONDecodeError, AttributeError, TypeError, ValueError) as err:
                raise SearchStateError(
                    f"Kinship cache {self.path} is corrupt ({err}); delete it."
                ) from err

    @staticmethod
    def key(a: str, b: str) -> str:
        return "|".join(sorted((a, b)))

    def get(self, a: str, b: str) -> float | None:
        return self.entries.get(self.key(a, b))

    def put(self, a: str, b: str, value: float) -> None:
        self.entries[self.key(a, b)] = float(value)
        if self.path is not None:
            write_json(Path(self.path), self.entries)


class RunFolder:
    """A run folder opened for a search with given settings.

    Args:
        root: the folder (created if missing).
        settings: JSON-able settings that determine results; their fingerprint is stored and
            checked on resume.
        resume: continue the run already in ``root``. Without it, a folder that already holds a
            search is refused, so a run is never silently overwritten.
        caches: the folder of the score and kinship caches (default: ``root``); ``hub-merge
            compare`` gives every strategy's run the compare folder, so all rows share one cache.

    Raises:
        SearchStateError: resuming a folder with no run or one made with different settings, or
            starting a new run over an existing one.
    """

    def __init__(
        self,
        root: str | Path,
        settings: dict[str, Any],
        *,
        resume: bool = False,
        caches: str | Path | None = None,
    ) -> None:
        self.root = Path(root)
        self.settings = settings
        self.fingerprint = fingerprint(settings)
        state_path = self.root / "state.json"
        if resume:
            if not state_path.is_file():
                raise SearchStateError(
                    f"No search to resume in {self.root} (no state.json); drop --resume to start one."
                )
            state = self._read_state()
            if state.get("fingerprint") != self.fingerprint:
                diff = sorted(
                    k
                    for k in set(settings) | set(state.get("settings", {}))
                    if json.dumps(settings.get(k), sort_keys=True, default=str)
                    != json.dumps(state.get("settings", {}).get(k), sort_keys=True, default=str)
                )
                raise SearchStateError(
                    f"Run folder {self.root} was made with different settings (differs in: {', '.join(diff) or 'unknown'}); "
                    "use the same settings to resume, or a new --out folder."
                )
            self.state = state
        else:
            if state_path.exists():
                raise SearchStateError(
                    f"{self.root} already holds a search; pass --resume to continue it or choose another --out."
                )
            self.root.mkdir(parents=True, exist_ok=True)
            self.state = {
                "version": STATE_VERSION,
                "fingerprint": self.fingerprint,
                "settings": settings,
                "status": "running",
                "generation": 0,
            }
            self.save_state()
        shared = self.root if caches is None else Path(caches)
        self.scores = ScoreCache(shared / "scores.json")
        self.test_scores = ScoreCache(shared / "test_scores.json")
        self.kinship = KinshipCache(shared / "kinship.json")

    def _read_state(self) -> dict[str, Any]:
        try:
            state = json.loads((self.root / "state.json").read_text())
        except json.JSONDecodeError as err:
            raise SearchStateError(
                f"{self.root / 'state.json'} is corrupt ({err}); start a new run."
            ) from err
        if state.get("version") != STATE_VERSION:
            raise SearchStateError(
                f"{self.root} was written by another hub-merge state version; start a new run."
            )
        return state

    @property
    def tree_path(self) -> Path:
        return self.root / "family_tree.json"

    def save_state(self, **updates: Any) -> None:
        self.state.update(updates)
        write_json(self.root / "state.json", self.state)

    def save_tree(self, tree: FamilyTree) -> None:
        tree.save(self.tree_path)

    def load_tree(self) -> FamilyTree:
        return FamilyTree.load(self.tree_path)
