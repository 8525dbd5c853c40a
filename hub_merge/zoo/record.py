"""The zoo record on disk (``zoo.json``) and the cached, locked, atomic build every zoo goes through.

Each zoo lives in ``<cache>/zoo/<name>`` with a ``zoo.json`` manifest. Building happens in a
temporary sibling folder that is renamed into place only when complete, under a file lock, so a
crash never leaves a half zoo and concurrent pytest processes build it once.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hub_merge.errors import ConfigError

__all__ = ["MANIFEST", "REPO_OWNER", "Zoo", "default_cache_dir", "load_zoo"]

MANIFEST = "zoo.json"
# Repo ids suggested for pushing the zoo to a (local) Hub; cards name their base with these.
REPO_OWNER = "hub-merge-zoo"


@dataclass(frozen=True)
class Zoo:
    """A built zoo on disk. Paths are absolute; ``zoo.json`` in ``root`` stores them relative."""

    name: str
    root: Path
    base: Path
    experts: dict[str, Path] = field(default_factory=dict)
    adapters: dict[str, Path] = field(default_factory=dict)
    tasks: dict[str, Path] = field(default_factory=dict)
    train: dict[str, Path] = field(default_factory=dict)
    # Suggested Hub repo id for each model folder ("base", "expert/<task>", "adapter/<task>").
    repo_ids: dict[str, str] = field(default_factory=dict)
    seed: int = 0
    # Which task each expert/adapter was trained on, where its name is not the task itself
    # (smol-wide has several per task: "sort-a", "sort-b", ...). See :meth:`task_of`.
    expert_tasks: dict[str, str] = field(default_factory=dict)

    def task_of(self, name: str) -> str:
        """The task expert or adapter ``name`` was trained on (its own name in the older zoos)."""
        return self.expert_tasks.get(name, name)

    def all_models(self) -> dict[str, Path]:
        """Every model folder keyed as in ``repo_ids``: ``base``, ``expert/<t>``, ``adapter/<t>``."""
        out = {"base": self.base}
        out.update({f"expert/{t}": p for t, p in self.experts.items()})
        out.update({f"adapter/{t}": p for t, p in self.adapters.items()})
        return out

    def to_json(self) -> dict[str, Any]:
        rel = lambda p: p.relative_to(self.root).as_posix()  # noqa: E731
        return {
            "name": self.name,
            "seed": self.seed,
            "base": rel(self.base),
            "experts": {t: rel(p) for t, p in self.experts.items()},
            "adapters": {t: rel(p) for t, p in self.adapters.items()},
            "tasks": {t: rel(p) for t, p in self.tasks.items()},
            "train": {t: rel(p) for t, p in self.train.items()},
            "repo_ids": dict(self.repo_ids),
            **({"expert_tasks": dict(self.expert_tasks)} if self.expert_tasks else {}),
        }

    @classmethod
    def from_json(cls, root: Path, data: dict[str, Any]) -> Zoo:
        root = Path(root).resolve()
        paths = lambda d: {k: root / v for k, v in d.items()}  # noqa: E731
        return cls(
            name=data["name"],
            root=root,
            base=root / data["base"],
            experts=paths(data.get("experts", {})),
            adapters=paths(data.get("adapters", {})),
            tasks=paths(data.get("tasks", {})),
            train=paths(data.get("train", {})),
            repo_ids=dict(data.get("repo_ids", {})),
            seed=int(data.get("seed", 0)),
            expert_tasks=dict(data.get("expert_tasks", {})),
        )


def default_cache_dir() -> Path:
    """``$HUB_MERGE_CACHE`` or ``~/.cache/hub_merge``."""
    env = os.environ.get("HUB_MERGE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "hub_merge"


def load_zoo(root: str | Path) -> Zoo:
    """Read a built zoo from its folder. Raises ``ConfigError`` if it is not a complete zoo."""
    root = Path(root)
    manifest = root / MANIFEST
    if not manifest.is_file():
        raise ConfigError(f"{root} is not a built zoo (no {MANIFEST}); build it with build_*_zoo()")
    return Zoo.from_json(root, json.loads(manifest.read_text(encoding="utf-8")))


def cached_build(
    name: str, cache_dir: str | Path | None, force: bool, build: Callable[[Path, Path], Zoo]
) -> Zoo:
    """Return the zoo ``name`` from the cache, building it first if missing (or ``force``).

    ``build(tmp, final)`` writes a complete zoo into ``tmp`` whose absolute paths (adapter configs)
    already point at ``final``; the folder is then renamed into place. The lock makes a concurrent
    caller wait and then reuse the finished zoo instead of building it twice.
    """
    from filelock import FileLock

    parent = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / "zoo"
    parent = parent.expanduser().resolve()
    parent.mkdir(parents=True, exist_ok=True)
    final = parent / name
    if not force and (final / MANIFEST).is_file():  # fast path, no lock needed
        return load_zoo(final)
    with FileLock(str(parent / f".{name}.lock")):
        if not force and (final / MANIFEST).is_file():
            return load_zoo(final)
        tmp = parent / f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            tmp.mkdir()
            zoo = build(tmp, final)
            (tmp / MANIFEST).write_text(json.dumps(zoo.to_json(), indent=2, sort_keys=True) + "\n")
            if final.exists():  # force, or a half zoo left by an older layout
                trash = parent / f".{name}.old-{uuid.uuid4().hex[:8]}"
                final.rename(trash)
                shutil.rmtree(trash, ignore_errors=True)
            tmp.rename(final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return load_zoo(final)
