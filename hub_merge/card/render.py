"""The card itself: front matter (model tree, model-index, the hub_merge block) and the body."""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..comparison import ComparisonRow, compare, format_score
from ..errors import ConfigError
from ..evaluate.fitness import lower_is_better
from ..lineage import FamilyTree, LineageNode
from ..merge.registry import method_for
from ..version import __version__
from .constants import KINSHIP_PAPER, TEMPLATE_NAME, method_words
from .licenses import LicenseChoice, resolve_license
from .steps import base_models, card_steps, merge_node, merge_steps, published, random_methods


def _mermaid_ids(ids: Sequence[str]) -> dict[str, str]:
    # Mermaid ids allow [A-Za-z0-9_]; "end" and friends are keywords, hence the prefix.
    out: dict[str, str] = {}
    for node_id in ids:
        safe = "n_" + re.sub(r"[^A-Za-z0-9_]", "_", node_id)
        candidate, i = safe, 2
        while candidate in out.values():
            candidate, i = f"{safe}_{i}", i + 1
        out[node_id] = candidate
    return out


def _mermaid_text(text: str) -> str:
    # Inside "..." labels mermaid reads #code; entities; quotes and angle brackets would break it.
    return re.sub(r"[\"<>`#;|\[\]{}]", "_", text)


def _fmt(value: float | None, digits: int = 4) -> str:
    if digits == 4:
        return format_score(value)  # the comparison's numbers, as every display prints them
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}g}"


def _row_name(row: ComparisonRow) -> str:
    """A comparison row's name in a card table (node ids in backticks)."""
    return row.label if row.role == "oracle" else f"`{_cell(row.id)}`"


def _cell(text: object) -> str:
    """Text safe inside a markdown table cell (a '|' or a newline would split the row)."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def mermaid_tree(tree: FamilyTree, highlight: str | None = None) -> str:
    """The family tree as a mermaid ``graph TD``: every node, parent --> child, winner in gold.

    The base model, when present, points at the experts with dotted 'fine-tune' edges (they are
    its derivatives, not lineage parents).
    """
    ids = _mermaid_ids(list(tree.nodes))
    lines = ["graph TD"]
    for node in tree.nodes.values():
        label = node.id
        if node.is_original:
            where = node.repo_id or "local: " + Path(node.path or node.name).name
            label += "<br/>" + _mermaid_text(where)
            if node.is_adapter:
                label += " (LoRA)"
        else:
            label += f"<br/>{_mermaid_text(str(node.method))}"
        if node.fitness is not None:
            label += f"<br/>fitness {_fmt(node.fitness)}"
        lines.append(f'  {ids[node.id]}["{label}"]')
    for node in tree.nodes.values():
        for parent in node.parents:
            lines.append(f"  {ids[parent]} --> {ids[node.id]}")
    if tree.base and tree.base in tree.nodes:
        for expert in tree.experts():
            lines.append(f"  {ids[tree.base]} -. fine-tune .-> {ids[expert.id]}")
    lines.append("  classDef original fill:#e3f2fd,stroke:#1565c0")
    lines.append("  classDef merged fill:#f5f5f5,stroke:#616161")
    lines.append("  classDef winner fill:#ffd54f,stroke:#e65100,stroke-width:3px")
    originals = [ids[n.id] for n in tree.nodes.values() if n.is_original]
    merged = [ids[n.id] for n in tree.merges() if n.id != highlight]
    if originals:
        lines.append(f"  class {','.join(originals)} original")
    if merged:
        lines.append(f"  class {','.join(merged)} merged")
    if highlight in ids:
        lines.append(f"  class {ids[highlight]} winner")
    return "\n".join(lines)


def clean_json(value: Any) -> Any:
    """JSON/YAML-safe copy: NaN and infinities become None (YAML ``.nan`` is not portable)."""
    if isinstance(value, float):
        return None if not math.isfinite(value) else value
    if isinstance(value, Mapping):
        return {str(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    return value


def _lineage_entry(node: LineageNode) -> dict[str, Any]:
    entry: dict[str, Any] = {"id": node.id, "kind": node.kind, "generation": node.generation}
    if node.is_original:
        entry["source"] = node.source
        if node.repo_id:
            entry["repo_id"] = node.repo_id
            entry["revision"] = node.revision
        else:
            entry["path"] = node.path
        entry["adapter"] = node.is_adapter
        entry["license"] = node.license
    else:
        entry["parents"] = list(node.parents)
        entry["method"] = node.method
        entry["parameters"] = node.parameters
        entry["merge_gain"] = node.merge_gain
        entry["parent_kinship"] = node.parent_kinship
    entry["fitness"] = node.fitness
    entry["scores"] = dict(node.scores)
    return clean_json(entry)


def kinship_block(tree: FamilyTree) -> dict[str, Any]:
    return clean_json(
        {
            "metric": tree.kinship_metric,
            "ids": list(tree.kinship_ids),
            "matrix": tree.kinship_matrix,
        }
    )


def _hub_merge_block(tree: FamilyTree, node: LineageNode, adapters: list[str]) -> dict[str, Any]:
    block: dict[str, Any] = {
        "version": __version__,
        "node": node.id,
        "winner": tree.winner,
        "score_metric": tree.score_metric,
        "tasks": list(tree.tasks),
        "lineage": [_lineage_entry(n) for n in tree.nodes.values()],
        "kinship": kinship_block(tree),
    }
    if adapters:
        block["adapters"] = adapters
    base = tree.nodes.get(tree.base) if tree.base else None
    if base is not None:
        fields = {"id": base.repo_id, "revision": base.revision, "path": base.path}
        block["base"] = {k: v for k, v in fields.items() if v is not None}
    return block


def card_metadata(
    tree: FamilyTree,
    node_id: str | None = None,
    *,
    license: LicenseChoice,
    model_name: str,
    library_name: str = "transformers",
) -> ModelCardData:
    """The card's front matter: Hub tree links, license, evaluation results, lineage.

    Scores are the raw per-task values of ``tree.score_metric`` (``fitness`` is their
    higher-is-better aggregate and is in the ``hub_merge`` block).
    """
    node = merge_node(tree, node_id)
    ids, adapters = base_models(tree, node.id)
    steps = merge_steps(tree, node.id)
    methods = sorted({str(tree.nodes[s].method) for s in steps})
    lower_better = lower_is_better(tree.score_metric)
    # held-out test rows when the run has them (the search never read them); else the dev rows
    test = tree.test_scores.get(node.id)
    scores, split = (test, "test") if test else (node.scores, "dev")
    results = [
        EvalResult(
            task_type="text-generation",
            task_name=task,
            dataset_type=task,
            dataset_name=f"{task} ({split} rows)",
            dataset_split=split,
            metric_type=tree.score_metric,
            metric_value=round(float(scores[task]), 6),
            metric_name=f"{tree.score_metric} ({'lower' if lower_better else 'higher'} is better)",
        )
        for task in (tree.tasks or sorted(scores))
        if task in scores and math.isfinite(float(scores[task]))
    ]
    return ModelCardData(
        base_model=ids or None,
        base_model_relation="merge" if ids else None,
        library_name=library_name,
        license=license.license,
        license_name=license.license_name,
        tags=["merge", "hub-merge", *methods],
        model_name=model_name,
        eval_results=results or None,
        hub_merge=_hub_merge_block(tree, node, adapters),
    )


def _search_paragraph(tree: FamilyTree) -> str | None:
    """The strategy's own card paragraph with its paper's link (``Strategy.explain``)."""
    name = getattr(tree, "strategy", "greedy") or "greedy"
    from ..search.strategy import get_strategy

    try:
        return get_strategy(name).explain()
    except ConfigError:  # a run made by a strategy this install does not have
        return f"The blend was found by hub-merge's `{name}` search."


def reproduce_command(tree: FamilyTree) -> str:
    """The ``hub-merge search`` line that reruns this search (task files named after the tasks).

    The flags are the run's settings read back (``RunSettings.cli_args``); settings the CLI
    cannot spell (task weights, test rows from their own files) become ``#`` notes above the
    command, so the reader knows the line alone is not the whole story.
    """
    from ..search.settings import RunSettings

    settings = RunSettings.from_dict(tree.settings, getattr(tree, "strategy", None))
    base = tree.nodes[tree.base].source if tree.base and tree.base in tree.nodes else "BASE"
    args = ["hub-merge", "search", "--base", base, "--experts"]
    args += [n.source for n in tree.experts()]
    args += ["--tasks", *[f"{t}.jsonl" for t in tree.tasks], "--out", "run"]
    args += settings.cli_args()
    split = tree.split or {}
    notes = settings.notes()
    if split.get("kind") == "files":
        notes.insert(0, f"# test rows from: {' '.join(split.get('test_files', []))} (--test-tasks)")
    return "\n".join([*notes, " ".join(shlex.quote(a) for a in args)])


def template_path() -> Path:
    """The packaged Jinja template (a copy of the repo's top-level ``model_card_template.md``)."""
    return Path(__file__).parent.parent / "templates" / TEMPLATE_NAME


def build_card(
    tree: FamilyTree,
    *,
    node_id: str | None = None,
    license: str | None = None,
    repo_id: str | None = None,
    recipes: Mapping[str, Any] | None = None,
    library_name: str = "transformers",
    images: Sequence[str] = (),
    template: str | Path | None = None,
    arithmetic: str | None = None,
) -> ModelCard:
    """Render the model card of one merged node of a run.

    Args:
        tree (`FamilyTree`): the run's lineage (``family_tree.json``).
        node_id (`str`, *optional*): the node to describe; default: the run's winner.
        license (`str`, *optional*): the merge's license; required when parents' licenses
            conflict or are unknown.
        repo_id (`str`, *optional*): where it will be published (title and usage snippet).
        recipes (`Mapping`, *optional*): node id -> recipe tree (``recipes.json``) or
            ``MergeRecipe``; default: rebuilt from the lineage.
        library_name (`str`, *optional*): ``transformers``, or ``peft`` when the output is a LoRA.
        images (`Sequence[str]`): image files that will sit beside the card (``fitness.png``...).
        template (`str` or `Path`, *optional*): another Jinja template.
        arithmetic (`str`, *optional*): whose arithmetic computed the weights, as the merge
            output's safetensors metadata records it (``mergekit`` or ``hub-merge-kernels``).

    Returns:
        `ModelCard`: front matter + body; check it with :func:`validate_card` before pushing.

    Raises:
        ConfigError: the node is unknown or is an original, not a merge.
        LicenseConflictError: see :func:`resolve_license`.
    """
    node = merge_node(tree, node_id)
    tree.validate()
    choice = resolve_license(tree, node.id, license)
    originals = tree.originals(node.id)
    name = repo_id.split("/")[-1] if repo_id else _default_name(tree, node)
    data = card_metadata(tree, node.id, license=choice, model_name=name, library_name=library_name)
    ids, adapters = base_models(tree, node.id)
    base = tree.nodes[tree.base] if tree.base and tree.base in tree.nodes else None
    steps = card_steps(tree, node.id, recipes)
    methods = []
    for method in sorted({s.method for s in steps}):
        title, plain, paper = method_words(method)
        methods.append({"name": method, "title": title, "plain": plain, "paper": paper})
    kin_ids = list(tree.kinship_ids)
    comparison = compare(tree, node.id)
    context = {
        "model_title": name,
        "repo_id": repo_id or f"your-name/{name}",
        "node": node,
        "winner": tree.winner,
        "base": base,
        "originals": originals,
        "local_originals": [n for n in originals if not n.repo_id],
        "adapters": adapters,
        "base_model_ids": ids,
        "license_choice": choice,
        "library_name": library_name,
        "methods": methods,
        "search_paragraph": _search_paragraph(tree),
        "comparison": comparison,
        "oracle": any(r.role == "oracle" for r in comparison.rows),
        "row_name": _row_name,
        "split_description": (tree.split or {}).get("description"),
        "tasks": [t for t in tree.tasks if t in node.scores] or sorted(node.scores),
        "score_metric": tree.score_metric,
        "score_lower_better": comparison.lower_is_better,
        "experts": originals,
        "fmt": _fmt,
        "cell": _cell,
        "mermaid": mermaid_tree(tree, highlight=node.id),
        "kinship_metric": tree.kinship_metric,
        "kinship_ids": kin_ids,
        "kinship_rows": [[_fmt(v, 3) for v in row] for row in tree.kinship_matrix[: len(kin_ids)]],
        "kinship_paper": KINSHIP_PAPER,
        "generations": tree.generations,
        "settings": tree.settings,
        "images": set(images),
        "command": reproduce_command(tree),
        "steps": steps,
        "random_methods": sorted({s.method for s in steps if s.method in random_methods()}),
        "n_nodes": len(tree.nodes),
        "hub_merge_version": __version__,
        "arithmetic": arithmetic,
        # the method's own sections (a DAM card's training facts); absent keys render as nothing
        **method_for(str(node.method)).card_context(node.parameters),
    }
    path = Path(template) if template else template_path()
    card = ModelCard.from_template(data, template_path=str(path), **context)
    return ModelCard(published(str(card), tree))


def _default_name(tree: FamilyTree, node: LineageNode) -> str:
    # Not the output folder's name (mergekit's habit): name it after what went in.
    parts = [n.id for n in tree.originals(node.id)]
    name = "-".join(parts)[:60].strip("-_.") or "model"
    return f"{name}-merge"


# --- validation ------------------------------------------------------------------------------------
