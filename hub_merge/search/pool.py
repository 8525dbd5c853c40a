"""The search's candidate pool: one lineage node per distinct candidate, baselines included.

A recipe is found again by its cache key, so a candidate asked twice (or rebuilt on resume) is
one node. A node's recipe in the family tree names its inputs by node id (an expert's name, an
earlier merge's ``gN-i``), never by path, so the tree reads as a lineage and holds no disk paths.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import ConfigError
from ..lineage import BASE_ID, FamilyTree, LineageNode
from ..merge.recipe import MergeRecipe, ModelEntry
from .strategy import Expert


class CandidatePool:
    """The family tree of a search and the recipe behind each of its nodes.

    Args:
        tree: the (empty) family tree to fill.
        key: the cache key of a recipe (``Scorer.key``): equal keys are one node.
        sources: model string -> node id, for the base and each expert (what recipes read).
    """

    def __init__(
        self, tree: FamilyTree, key: Callable[[MergeRecipe], str], sources: dict[str, str]
    ) -> None:
        self.tree = tree
        self.key = key
        self.recipes: dict[str, MergeRecipe] = {}
        self._by_key: dict[str, str] = {}  # cache key -> node id
        self._by_source = dict(sources)

    def add_base(self, base: Expert) -> None:
        """Add the common base's node (a parent of nothing: recipes name it as their base)."""
        self.tree.add(origin_node(base, BASE_ID, "base"))

    def add_expert(self, e: Expert) -> LineageNode:
        """Add an expert's node: a baseline, keyed by its (leaf) recipe."""
        node = origin_node(e, e.name, "expert")
        node.recipe_hash = self.key(e.recipe)
        node.baseline = "expert"
        self.recipes[e.name] = e.recipe
        self._by_key[node.recipe_hash] = e.name
        self.tree.add(node)
        return node

    def node_of(self, recipe: MergeRecipe) -> str | None:
        return self._by_key.get(self.key(recipe))

    def _input_id(self, item: str | MergeRecipe, generation: int) -> str:
        if isinstance(item, str):
            found = self._by_source.get(item)
            if found is None:
                raise ConfigError(
                    f"A candidate reads {item!r}, which is neither the base nor one of the experts."
                )
            return found
        return self.node(item, generation, intermediate=True)

    def node(
        self,
        recipe: MergeRecipe,
        generation: int,
        *,
        intermediate: bool = False,
        node_id: str | None = None,
    ) -> str:
        """The lineage node of a recipe (made, with its inputs' nodes, if new)."""
        if recipe.is_leaf:
            return self._input_id(recipe.models[0].model, generation)
        key = self.key(recipe)
        if key in self._by_key:
            return self._by_key[key]
        base_id = self._input_id(recipe.base, generation) if recipe.base is not None else None
        model_ids = [self._input_id(e.model, generation) for e in recipe.models]
        step = recipe.model_copy(
            update={
                "base": base_id,
                "models": [
                    ModelEntry(model=i, parameters=e.parameters)
                    for i, e in zip(model_ids, recipe.models, strict=True)
                ],
            }
        )
        parents = [i for i in ([base_id] if base_id else []) + model_ids if i != BASE_ID]
        if node_id is None:
            index = 1 + sum(
                1
                for n in self.tree.nodes.values()
                if n.kind == "merge" and n.generation == generation
            )
            node_id = f"g{generation}-{index}"
            while node_id in self.tree.nodes:
                index += 1
                node_id = f"g{generation}-{index}"
        self.tree.add(
            LineageNode(
                id=node_id,
                kind="merge",
                name=node_id,
                parents=list(dict.fromkeys(parents)),
                generation=generation,
                method=recipe.method,
                parameters=step.to_dict().get("parameters", {}),
                recipe=step.to_dict(),
                recipe_hash=key,
            )
        )
        self.recipes[node_id] = recipe
        self._by_key[key] = node_id
        return node_id

    def best(self) -> LineageNode:
        """The fittest scored candidate; ties go to the one made first (baselines first)."""
        scored = [n for n in self.tree.nodes.values() if n.fitness is not None]
        return max(scored, key=lambda n: (n.fitness, -list(self.tree.nodes).index(n.id)))

    def as_ids(self, value: Any) -> Any:
        """A strategy's summary value with its recipes named by node id (``?`` if unknown)."""
        if isinstance(value, MergeRecipe):
            return self.node_of(value) or "?"
        if isinstance(value, list) and value and all(isinstance(v, MergeRecipe) for v in value):
            return [self.as_ids(v) for v in value]
        return value


def origin_node(e: Expert, node_id: str, kind: str) -> LineageNode:
    """The node of a model the search starts from (an expert, or the base)."""
    return LineageNode(
        id=node_id,
        kind=kind,  # type: ignore[arg-type]
        name=e.name,
        repo_id=e.repo_id,
        revision=e.revision,
        path=e.path,
        is_adapter=e.is_adapter,
        license=e.license,
    )
