"""What a search returns: the winner, its family tree, the baselines and what the run cost."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..lineage import FamilyTree, LineageNode
from ..merge.recipe import MergeRecipe


@dataclass
class SearchResult:
    """What a search returns: the winner, the whole family tree and what it cost."""

    winner: str
    tree: FamilyTree
    stop_reason: str
    generations: int
    evaluations: int  # candidates actually scored in this call (cache misses)
    cache_hits: int
    kinship_computed: int
    strategy: str = "greedy"
    recipes: dict[str, MergeRecipe] = field(default_factory=dict)  # node id -> full recipe
    run_folder: str | None = None
    winner_path: str | None = None

    @property
    def winner_node(self) -> LineageNode:
        return self.tree.nodes[self.winner]

    def baselines(self) -> list[LineageNode]:
        return self.tree.baselines()

    def to_dict(self) -> dict[str, Any]:
        node = self.winner_node
        return {
            "strategy": self.strategy,
            "winner": self.winner,
            "fitness": node.fitness,
            "scores": node.scores,
            "test_scores": self.tree.test_scores.get(self.winner),
            "baselines": {
                n.id: {
                    "fitness": n.fitness,
                    "scores": n.scores,
                    "test_scores": self.tree.test_scores.get(n.id),
                }
                for n in self.baselines()
            },
            "stop_reason": self.stop_reason,
            "generations": self.generations,
            "evaluations": self.evaluations,
            "cache_hits": self.cache_hits,
            "kinship_computed": self.kinship_computed,
            "nodes": len(self.tree.nodes),
            "run_folder": self.run_folder,
            "winner_path": self.winner_path,
        }
