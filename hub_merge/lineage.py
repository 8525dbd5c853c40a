"""Lineage: the family tree of every model a search touched, as plain data.

The search writes it, the card renders it, the Hub stores it (``hub_merge.json`` and the card's
``hub_merge`` block). It is deliberately a small, JSON-round-trippable structure with no tensors,
so any tool can read a run without importing torch.

Conventions:
- ``fitness`` is always "higher is better" (a loss metric is stored negated in ``fitness``; the raw
  per-task values live in ``scores`` with ``score_metric`` naming them).
- Original experts carry ``repo_id`` and the resolved commit ``revision`` (a 40-hex sha) when they
  came from the Hub, or ``path`` when they came from a local folder.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import SearchStateError

NodeKind = Literal["base", "expert", "merge"]
BASE_ID = "base"  # the common base's node id in every search's tree


@dataclass
class LineageNode:
    """One model in the family tree."""

    id: str
    kind: NodeKind
    name: str
    parents: list[str] = field(default_factory=list)
    generation: int = 0
    # where an original comes from
    repo_id: str | None = None
    revision: str | None = None
    path: str | None = None
    is_adapter: bool = False
    license: str | None = None
    # how a merge was made: ``recipe`` is this one step as a MergeRecipe dict whose inputs are
    # node ids (``base`` = the common base's node), so a card can export it step by step
    method: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    recipe: dict[str, Any] | None = None
    recipe_hash: str | None = None
    baseline: str | None = None  # "expert" or "uniform": scored before the strategy ran
    # how it scored
    fitness: float | None = None
    scores: dict[str, float] = field(default_factory=dict)
    merge_gain: float | None = None
    parent_kinship: float | None = None

    @property
    def is_original(self) -> bool:
        return self.kind in ("base", "expert")

    @property
    def source(self) -> str:
        """A human-readable origin: ``org/name@sha`` or the folder."""
        if self.repo_id:
            return f"{self.repo_id}@{self.revision}" if self.revision else self.repo_id
        return self.path or self.name


@dataclass
class GenerationRecord:
    """What one generation of a search did, for the fitness-by-generation plot and the card."""

    generation: int
    best_fitness: float
    best_id: str
    top: list[str]
    top_kinship: float | None = None
    evaluations: int = 0  # distinct candidates first scored in this generation (cached or not)
    children: list[str] = field(default_factory=list)
    note: str = ""
    stats: dict[str, Any] = field(default_factory=dict)  # the strategy's own numbers (spread...)


@dataclass
class FamilyTree:
    """All nodes of a run, the winner, the kinship matrix of the originals and the history."""

    base: str | None = None
    nodes: dict[str, LineageNode] = field(default_factory=dict)
    winner: str | None = None
    score_metric: str = "answer_loss"
    kinship_metric: str = "pearson"
    kinship_ids: list[str] = field(default_factory=list)
    kinship_matrix: list[list[float]] = field(default_factory=list)
    generations: list[GenerationRecord] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    strategy: str = "greedy"
    test_scores: dict[str, dict[str, float]] = field(default_factory=dict)  # node id -> held out
    split: dict[str, Any] = field(default_factory=dict)  # how dev and test rows were chosen

    def scoring_rule(self) -> tuple[dict[str, float], str]:
        """The task weights and the combine rule (``mean``/``harmonic``) the run's fitness used."""
        settings = self.settings or {}
        return dict(settings.get("weights") or {}), str(settings.get("combine") or "mean")

    def baselines(self) -> list[LineageNode]:
        """The nodes scored before the strategy ran (each expert, the uniform average)."""
        return [n for n in self.nodes.values() if n.baseline]

    def add(self, node: LineageNode) -> LineageNode:
        if node.id in self.nodes:
            raise SearchStateError(f"Lineage node {node.id!r} already exists.")
        missing = [p for p in node.parents if p not in self.nodes]
        if missing:
            raise SearchStateError(f"Lineage node {node.id!r} names unknown parents {missing}.")
        self.nodes[node.id] = node
        return node

    def experts(self) -> list[LineageNode]:
        return [n for n in self.nodes.values() if n.kind == "expert"]

    def merges(self) -> list[LineageNode]:
        return [n for n in self.nodes.values() if n.kind == "merge"]

    def ancestors(self, node_id: str) -> list[str]:
        """Every ancestor of a node (parents first, no duplicates), excluding the node itself."""
        seen: list[str] = []
        stack = list(self.nodes[node_id].parents)
        while stack:
            current = stack.pop(0)
            if current not in seen:
                seen.append(current)
                stack.extend(self.nodes[current].parents)
        return seen

    def originals(self, node_id: str) -> list[LineageNode]:
        """The original experts a node descends from, in the order they were added to the tree."""
        node = self.nodes[node_id]
        if node.kind == "expert":
            return [node]
        wanted = set(self.ancestors(node_id))
        return [n for n in self.nodes.values() if n.kind == "expert" and n.id in wanted]

    def validate(self) -> None:
        """Check the tree is complete: parents exist and come earlier; Hub originals carry a sha."""
        order = {node_id: i for i, node_id in enumerate(self.nodes)}
        for node in self.nodes.values():
            for parent in node.parents:
                if parent not in order or order[parent] >= order[node.id]:
                    raise SearchStateError(
                        f"Node {node.id!r} has parent {parent!r} that is missing or later."
                    )
            if node.kind == "merge" and (not node.parents or not node.method):
                raise SearchStateError(f"Merged node {node.id!r} lacks parents or a method.")
            if (
                node.is_original
                and node.repo_id
                and not (node.revision and len(node.revision) == 40)
            ):
                raise SearchStateError(
                    f"Original {node.id!r} from {node.repo_id} has no resolved commit sha."
                )
        if self.winner is not None and self.winner not in self.nodes:
            raise SearchStateError(f"Winner {self.winner!r} is not in the tree.")

    # --- JSON ---------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["nodes"] = [asdict(n) for n in self.nodes.values()]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FamilyTree:
        data = dict(data)
        nodes = [LineageNode(**n) for n in data.pop("nodes", [])]
        generations = [GenerationRecord(**g) for g in data.pop("generations", [])]
        tree = cls(**data, generations=generations)
        tree.nodes = {n.id: n for n in nodes}
        return tree

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=False))
        tmp.replace(path)  # atomic: a crash never leaves half a family tree
        return path

    @classmethod
    def load(cls, path: str | Path) -> FamilyTree:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except FileNotFoundError:
            raise SearchStateError(
                f"No family tree at {path}: is this a hub-merge run folder?"
            ) from None
        except (json.JSONDecodeError, TypeError) as err:
            raise SearchStateError(
                f"Family tree {path} is corrupt ({err}); re-run the search."
            ) from err
