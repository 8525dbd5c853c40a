"""A merge's steps as recipes: its parents by reference, the Hub ids on its model tree."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from ..lineage import FamilyTree, LineageNode
from ..merge.registry import method_for  # light: no tensors are read

if TYPE_CHECKING:
    from ..merge.recipe import MergeRecipe


def merge_node(tree: FamilyTree, node_id: str | None) -> LineageNode:
    node_id = node_id or tree.winner
    if node_id is None:
        raise ConfigError("The run has no winner yet; name the node to describe (--node ID).")
    if node_id not in tree.nodes:
        raise ConfigError(
            f"No node {node_id!r} in the run; nodes: {', '.join(list(tree.nodes)[:12])}."
        )
    node = tree.nodes[node_id]
    if node.kind != "merge":
        raise ConfigError(
            f"Node {node_id!r} is an original ({node.source}), not a merge: no merge beat it, so "
            "there is no merged model to describe. Publish the original as is"
            + (
                ", or pick a merged node with --node (e.g. "
                + ", ".join(n.id for n in tree.merges()[:3])
                + ")."
                if tree.merges()
                else "."
            )
        )
    return node


def merge_steps(tree: FamilyTree, node_id: str) -> list[str]:
    """Merged nodes on the path to ``node_id`` (itself last), in the order they were made."""
    wanted = set(tree.ancestors(node_id)) | {node_id}
    return [n.id for n in tree.nodes.values() if n.id in wanted and n.kind == "merge"]


def base_models(tree: FamilyTree, node_id: str) -> tuple[list[str], list[str]]:
    """``base_model`` ids for the card (the merged Hub repos), and which of them are adapters.

    The merged repos are the merge's parents on the Hub's model tree, LoRA adapters included:
    an adapter repo's page then lists the merge among its children (the Hub's
    ``base_model:merge:<adapter>`` filter finds it), and a merge of adapters names two or more
    models, as the Hub expects of ``base_model_relation: merge``. The base the adapters share is
    not a parent; it is recorded in the ``hub_merge`` block (``base``) and the body. Local
    folders have no Hub id and are left out (they appear in the lineage).
    """
    ids: list[str] = []
    adapters: list[str] = []
    for node in tree.originals(node_id):
        if node.is_adapter and node.repo_id:
            adapters.append(node.repo_id)
        if node.repo_id and node.repo_id not in ids:
            ids.append(node.repo_id)
    return ids, adapters


def _ref(tree: FamilyTree, node_id: str) -> str:
    """How mergekit names a step's input: ``repo@sha``, a folder, ``base+adapter`` or ``./step``."""
    node = tree.nodes[node_id]
    if node.kind == "merge":
        return f"./{node_id}"
    if node.is_adapter and tree.base and tree.base in tree.nodes and node_id != tree.base:
        return f"{tree.nodes[tree.base].source}+{node.source}"
    return node.source


def random_methods() -> frozenset[str]:
    from ..merge.recipe import RANDOM_METHODS  # lazy: the merge package imports torch

    return RANDOM_METHODS


def step_recipe(
    tree: FamilyTree, step_id: str, recipes: Mapping[str, Any] | None = None
) -> MergeRecipe:
    """The merge engine's recipe of ONE step: its parents by reference, its method and settings.

    A one-step ``MergeRecipe`` given in ``recipes`` is used as is. Otherwise the step recipe the
    search stored in the lineage node (``LineageNode.recipe``: a ``MergeRecipe`` whose inputs are
    node ids) is exported with each input spelled as mergekit reads it (:func:`_ref`); a node
    without one (a hand-made tree) merges its parents over the common base.
    """
    from ..merge.recipe import MergeRecipe, ModelEntry

    node = tree.nodes[step_id]
    given = (recipes or {}).get(step_id)
    if isinstance(given, MergeRecipe) and not given.nested:
        return given
    if node.recipe is not None:
        step = MergeRecipe.from_dict(node.recipe)
        # hub-merge's own methods read the originals themselves, not mergekit's base+adapter
        own = method_for(step.method).own_inputs

        def node_ref(item: Any) -> str:
            if not isinstance(item, str) or item not in tree.nodes:
                raise ConfigError(
                    f"Step {step_id}'s recipe names {item!r}, which is not in the run."
                )
            if own and tree.nodes[item].kind != "merge":
                return str(tree.nodes[item].source)
            return _ref(tree, item)

        return step.model_copy(
            update={
                "base": None if step.base is None else node_ref(step.base),
                "models": [
                    ModelEntry(model=node_ref(e.model), parameters=e.parameters)
                    for e in step.models
                ],
                "dtype": step.dtype if own else (step.dtype or _stored_dtype(tree)),
            }
        )
    # a node without a step recipe (hand-made trees): its parents over the common base
    return MergeRecipe(
        method=str(node.method),
        base=_ref(tree, tree.base) if tree.base else None,
        models=[ModelEntry(model=_ref(tree, p)) for p in node.parents],
        parameters=dict(node.parameters),
        dtype=_stored_dtype(tree),
    )


def _stored_dtype(tree: FamilyTree) -> str | None:
    """The dtype the run stored every merge step in (its session's), when the run recorded it.

    mergekit computes in ``dtype`` and writes ``out_dtype``; a step of a bfloat16 search is
    rounded to bfloat16 before the next step reads it, so its YAML must say ``out_dtype: bfloat16``
    to give the published tensors.
    """
    from ..merge.recipe import DTYPES

    dtype = tree.settings.get("dtype")
    return dtype if dtype in DTYPES else None


# --- body pieces ----------------------------------------------------------------------------------


@dataclass
class _Step:
    id: str
    parents: list[str]
    method: str
    recipe: dict[str, Any]
    mergekit_yaml: str
    tool: str = "mergekit"  # "hub-merge" for hub-merge's own methods (the registry's entries)


def card_steps(tree: FamilyTree, node_id: str, recipes: Mapping[str, Any] | None) -> list[_Step]:
    out = []
    for step_id in merge_steps(tree, node_id):
        recipe = step_recipe(tree, step_id, recipes)
        out.append(
            _Step(
                id=step_id,
                parents=list(tree.nodes[step_id].parents),
                method=recipe.method,
                recipe=recipe.to_dict(),
                **_step_config(recipe),
            )
        )
    return out


def _step_config(recipe: Any) -> dict[str, str]:
    """A step's config for its tool: mergekit YAML, or a hub-merge recipe for hub-merge's methods."""
    return method_for(recipe.method).card_step(recipe)


def published(value: Any, tree: FamilyTree) -> Any:
    """``value`` (a card's text or JSON data) with each run-folder file a node's method names (a
    DAM node's coefficient file) replaced by the file's name in the published repo, so a card
    never shows where the run folder lived (a Space's server disk included)."""
    paths: dict[str, str] = {}
    for n in tree.nodes.values():
        if n.method is not None:
            paths.update(method_for(str(n.method)).published_files(n.parameters or {}))
    if not paths:
        return value

    def fix(v: Any) -> Any:
        if isinstance(v, str):
            for path, name in paths.items():
                v = v.replace(path, name)
            return v
        if isinstance(v, Mapping):
            return {k: fix(x) for k, x in v.items()}
        if isinstance(v, list):
            return [fix(x) for x in v]
        return v

    return fix(value)
