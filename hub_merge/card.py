"""Model cards for merged models: lineage, scores and kinship as Hub metadata and a readable page.

The Hub builds its model tree from ``base_model`` + ``base_model_relation`` and shows evaluation
results from ``model-index``; everything else a user needs to trust a merge (which exact commits
went in, how they were combined, how related they were, how to redo it) goes in the body and in
the ``hub_merge`` block. mergekit's cards miss most of this (see design/model-card.md).

The core is pure: :func:`build_card` turns a :class:`~hub_merge.lineage.FamilyTree` (plus, when
the run saved them, its recipe trees) into a ``huggingface_hub.ModelCard`` rendered from the Jinja
template ``templates/model_card_template.md``. :func:`write_card` is the thin file layer used by
``hub-merge card``: it reads a run folder and writes ``README.md`` and ``hub_merge.json`` into the
model folder. No network access, ever: a card must render offline (unlike ``mergekit/card.py``).

Example:
    >>> tree = FamilyTree.load("run/family_tree.json")  # doctest: +SKIP
    >>> card = build_card(tree, repo_id="me/merged")  # doctest: +SKIP
    >>> validate_card(card)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from . import __version__, card_rules
from .atomic import atomic_path, atomic_write
from .errors import CardValidationError, ConfigError, LicenseConflictError
from .lineage import FamilyTree, LineageNode

if TYPE_CHECKING:
    from .merge.recipe import MergeRecipe

__all__ = [
    "CardResult",
    "LicenseChoice",
    "base_models",
    "build_card",
    "card_metadata",
    "default_out_dir",
    "dependency_versions",
    "hub_merge_json",
    "license_sources",
    "merge_steps",
    "mermaid_tree",
    "resolve_license",
    "step_recipe",
    "template_path",
    "validate_card",
    "write_card",
]

TEMPLATE_NAME = "model_card_template.md"
IMAGES = ("fitness.png", "family_tree.png", "kinship.png", "dam_coefficients.png")
DEPENDENCIES = ("torch", "transformers", "peft", "mergekit", "huggingface_hub", "safetensors")

# Plain-words description and paper of each method a card may name; unknown methods still render.
METHODS: dict[str, tuple[str, str, str | None]] = {
    "slerp": (
        "SLERP",
        "blends two models along the arc between their weights instead of a straight line, "
        "which keeps the size of the weights intact",
        "https://dl.acm.org/doi/10.1145/325165.325242",
    ),
    "linear": (
        "weighted average",
        "averages the models' weights (a 'model soup')",
        "https://arxiv.org/abs/2203.05482",
    ),
    "lora_factor_sum": (
        "LoRA factor mix",
        "mixes LoRA adapters factor by factor (A = Σ w·A_j, B = Σ w·B_j), as Model Swarms moves "
        "LoRA experts; the result is itself an adapter",
        "https://arxiv.org/abs/2410.11163",
    ),
    "dam": (
        "DAM",
        "learns one coefficient per input column of every linear layer for each model, by "
        "gradient descent so the merge imitates each model on its own prompts (the models' "
        "weights stay unchanged)",
        "https://arxiv.org/abs/2410.08371",
    ),
    "task_arithmetic": (
        "task arithmetic",
        "adds up what each model changed relative to the base model (its 'task vector')",
        "https://arxiv.org/abs/2212.04089",
    ),
    "ties": (
        "TIES",
        "keeps each model's largest changes, settles sign disagreements by a vote, then adds them",
        "https://arxiv.org/abs/2306.01708",
    ),
    "dare_ties": (
        "DARE-TIES",
        "randomly drops most of each model's changes, rescales the rest, then merges them as TIES",
        "https://arxiv.org/abs/2311.03099",
    ),
    "dare_linear": (
        "DARE",
        "randomly drops most of each model's changes, rescales the rest, then adds them",
        "https://arxiv.org/abs/2311.03099",
    ),
    "breadcrumbs": (
        "Model Breadcrumbs",
        "drops both the tiniest and the largest changes before adding them",
        "https://arxiv.org/abs/2312.06795",
    ),
    "della": (
        "DELLA",
        "drops changes with a probability that falls with their size, then adds the rest",
        "https://arxiv.org/abs/2406.11617",
    ),
    "model_stock": (
        "Model Stock",
        "picks how far to move from the base using the angle between the models' changes",
        "https://arxiv.org/abs/2403.19522",
    ),
}
KINSHIP_PAPER = "https://arxiv.org/abs/2410.12613"


# --- license ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LicenseChoice:
    """The card's license and where it came from.

    ``license`` is what goes in ``license:`` (a Hub license id, ``other`` when the chosen license
    is not one, then named by ``license_name``); ``parents`` maps every original that constrains
    it to its license (None when unknown).
    """

    license: str
    license_name: str | None
    parents: dict[str, str | None]
    explicit: bool = False


def _license_fields(value: str) -> tuple[str, str | None]:
    if value.lower() in card_rules.KNOWN_LICENSES:
        return value.lower(), None
    return "other", value


def license_sources(tree: FamilyTree, node_id: str) -> list[LineageNode]:
    """Originals whose terms bind the merge: the experts it descends from and their base model.

    The base counts too: every expert (and every adapter) is a derivative of its weights.
    """
    nodes = list(tree.originals(node_id))
    if tree.base and tree.base in tree.nodes:
        nodes.insert(0, tree.nodes[tree.base])
    return nodes


def resolve_license(tree: FamilyTree, node_id: str, explicit: str | None = None) -> LicenseChoice:
    """The merge's license: the parents' common license, or the one the user names.

    Args:
        tree (`FamilyTree`): the run's lineage.
        node_id (`str`): the node the card is for.
        explicit (`str`, *optional*): the user's choice (``--license``); wins over the parents'.

    Raises:
        LicenseConflictError: parents disagree, or a parent's license is unknown, and no explicit
            license was given. The message names every parent and its license.

    >>> resolve_license(tree, "g2-1").license  # doctest: +SKIP
    'apache-2.0'
    """
    parents = {n.id: n.license for n in license_sources(tree, node_id)}
    if explicit:
        lic, name = _license_fields(explicit.strip())
        return LicenseChoice(lic, name, parents, explicit=True)

    def describe(ids: Sequence[str]) -> str:
        return "; ".join(f"{i} ({tree.nodes[i].source}): {parents[i] or 'unknown'}" for i in ids)

    unknown = [i for i, lic in parents.items() if not lic]
    if unknown:
        raise LicenseConflictError(
            f"The license of {describe(unknown)} is unknown, so the merge's license cannot be "
            "derived. Check the models' terms and pass one explicitly, e.g. --license apache-2.0."
        )
    distinct = sorted({str(lic).lower() for lic in parents.values()})
    if len(distinct) > 1:
        raise LicenseConflictError(
            f"The parents' licenses conflict ({', '.join(distinct)}): {describe(list(parents))}. "
            "A merge inherits every parent's terms; check they are compatible and choose the "
            "merge's license explicitly, e.g. --license " + distinct[0] + "."
        )
    lic, name = _license_fields(next(iter(parents.values())) or "unknown")
    return LicenseChoice(lic, name, parents)


# --- lineage helpers ----------------------------------------------------------------------------


def _node(tree: FamilyTree, node_id: str | None) -> LineageNode:
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


def _random_methods() -> frozenset[str]:
    from .merge.recipe import RANDOM_METHODS  # lazy: the merge package imports torch

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
    from .merge.recipe import MergeRecipe, ModelEntry

    node = tree.nodes[step_id]
    given = (recipes or {}).get(step_id)
    if isinstance(given, MergeRecipe) and not given.nested:
        return given
    if node.recipe is not None:
        step = MergeRecipe.from_dict(node.recipe)
        from .merge.adapter_mix import FACTOR_METHOD

        # hub-merge's own factor mix reads the adapters themselves, not mergekit's base+adapter
        own = step.method in (FACTOR_METHOD, "dam")

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
    from .merge.recipe import DTYPES

    dtype = tree.settings.get("dtype")
    return dtype if dtype in DTYPES else None


# --- body pieces ----------------------------------------------------------------------------------


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
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}g}"


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


def _clean(value: Any) -> Any:
    """JSON/YAML-safe copy: NaN and infinities become None (YAML ``.nan`` is not portable)."""
    if isinstance(value, float):
        return None if not math.isfinite(value) else value
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
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
    return _clean(entry)


def _kinship_block(tree: FamilyTree) -> dict[str, Any]:
    return _clean(
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
        "kinship": _kinship_block(tree),
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
    node = _node(tree, node_id)
    ids, adapters = base_models(tree, node.id)
    steps = merge_steps(tree, node.id)
    methods = sorted({str(tree.nodes[s].method) for s in steps})
    lower_better = "loss" in tree.score_metric
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


def _test_rows(tree: FamilyTree, node: LineageNode) -> list[dict[str, Any]]:
    """This model and every baseline on the held-out test rows (empty for runs without them)."""
    from .evaluate import fitness_from_scores

    rows = []
    ids = [node.id, *(b.id for b in tree.baselines() if b.id != node.id)]
    for node_id in ids:
        scores = tree.test_scores.get(node_id)
        if not scores:
            continue
        fitness = fitness_from_scores(
            scores,
            tree.score_metric,
            tree.settings.get("weights") or None,
            tree.settings.get("combine", "mean"),
        )
        rows.append(
            {
                "id": node_id,
                "this": node_id == node.id,
                "scores": scores,
                "mean": -fitness if "loss" in tree.score_metric else fitness,
                "dev_fitness": tree.nodes[node_id].fitness,
            }
        )
    return rows if rows and rows[0]["this"] else []


def _search_paragraph(tree: FamilyTree) -> str | None:
    """The strategy's own card paragraph with its paper's link (``Strategy.explain``)."""
    name = getattr(tree, "strategy", "greedy") or "greedy"
    from .search.strategy import get_strategy

    try:
        return get_strategy(name).explain()
    except ConfigError:  # a run made by a strategy this install does not have
        return f"The blend was found by hub-merge's `{name}` search."


def _strategy_flags(tree: FamilyTree) -> list[str]:
    """``--strategy NAME`` and the strategy's settings that differ from its defaults."""
    import dataclasses

    from .search.strategy import get_strategy

    name = getattr(tree, "strategy", "greedy") or "greedy"
    s = tree.settings
    args = ["--strategy", name]
    try:
        fields = dataclasses.fields(get_strategy(name).settings_type)
    except ConfigError:
        return args
    for f in fields:
        if f.name not in s or f.name in ("patience",):  # patience: the shared flag below
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        value = s[f.name]
        if value == default:
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            spelled = f.metadata.get("flag", f"{flag}/--no-{f.name.replace('_', '-')}")
            args.append(spelled.split("/")[0 if value else 1])
        elif isinstance(value, (dict, list)):
            args += [flag, json.dumps(value, separators=(",", ":"))]
        else:
            args += [flag, str(value)]
    for key in ("seed", "budget"):
        if s.get(key) is not None:
            args += [f"--{key}", str(s[key])]
    if s.get("combine", "mean") != "mean":
        args += ["--combine", str(s["combine"])]
    return args


def _reproduce_command(tree: FamilyTree) -> str:
    """The ``hub-merge search`` line that reruns this search (task files named after the tasks).

    Settings the CLI cannot spell (task weights, a non-default base choice) become a ``#`` note
    above the command, so the reader knows the line alone is not the whole story.
    """
    s = tree.settings
    base = tree.nodes[tree.base].source if tree.base and tree.base in tree.nodes else "BASE"
    args = ["hub-merge", "search", "--base", base, "--experts"]
    args += [n.source for n in tree.experts()]
    args += ["--tasks", *[f"{t}.jsonl" for t in tree.tasks], "--out", "run"]
    greedy = (getattr(tree, "strategy", "greedy") or "greedy") == "greedy"
    if not greedy:
        args += _strategy_flags(tree)
    else:
        for key, flag in (("k", "--k"), ("generations", "--generations"), ("method", "--method")):
            if s.get(key) is not None:
                args += [flag, str(s[key])]
        if s.get("parameters"):
            args += ["--parameters", json.dumps(s["parameters"], separators=(",", ":"))]
        guided = s.get("kinship_guided", True) is not False
        if not guided:
            args.append("--no-kinship")
        if s.get("budget") is not None:
            args += ["--budget", str(s["budget"])]
        if s.get("seed"):
            args += ["--seed", str(s["seed"])]
    metric = s.get("kinship_metric")
    if metric:
        args += ["--kinship-metric", str(metric)]
    if greedy and guided and "kinship_stop" in s:
        stop = s["kinship_stop"]
        # no stop: a threshold kinship can never cross (correlations <= 1, distances >= 0)
        never = "0" if metric == "euclidean" else "1"
        args += ["--kinship-stop", never if stop is None else str(stop)]
    for key, flag in (("patience", "--patience"), ("metric", "--metric"), ("limit", "--limit")):
        if s.get(key) is not None:
            args += [flag, str(s[key])]
    split = tree.split or {}
    if split.get("kind") == "fraction" and split.get("test_fraction") not in (None, 0.3):
        args += ["--test-fraction", str(split["test_fraction"])]
    notes = []
    if split.get("kind") == "files":
        notes.append(f"# test rows from: {' '.join(split.get('test_files', []))} (--test-tasks)")
    if s.get("weights"):
        notes.append(f"# task weights (not a CLI flag): {json.dumps(s['weights'])}")
    if "parent_as_base" in s and s["parent_as_base"] != (s.get("method") == "slerp"):
        notes.append(f"# parent_as_base={s['parent_as_base']} (not a CLI flag)")
    return "\n".join([*notes, " ".join(shlex.quote(a) for a in args)])


def template_path() -> Path:
    """The packaged Jinja template (a copy of the repo's top-level ``model_card_template.md``)."""
    return Path(__file__).parent / "templates" / TEMPLATE_NAME


@dataclass
class _Step:
    id: str
    parents: list[str]
    method: str
    recipe: dict[str, Any]
    mergekit_yaml: str
    tool: str = "mergekit"  # "hub-merge" for hub-merge's own methods (lora_factor_sum)


def _steps(tree: FamilyTree, node_id: str, recipes: Mapping[str, Any] | None) -> list[_Step]:
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
    from .merge.adapter_mix import FACTOR_METHOD  # light: no tensors are read

    if recipe.method in (FACTOR_METHOD, "dam"):  # not mergekit methods: `hub-merge merge` runs them
        return {"mergekit_yaml": recipe.to_yaml(), "tool": "hub-merge"}
    return {"mergekit_yaml": recipe.to_mergekit_yaml()}


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
    node = _node(tree, node_id)
    tree.validate()
    choice = resolve_license(tree, node.id, license)
    originals = tree.originals(node.id)
    name = repo_id.split("/")[-1] if repo_id else _default_name(tree, node)
    data = card_metadata(tree, node.id, license=choice, model_name=name, library_name=library_name)
    ids, adapters = base_models(tree, node.id)
    base = tree.nodes[tree.base] if tree.base and tree.base in tree.nodes else None
    steps = _steps(tree, node.id, recipes)
    methods = []
    for method in sorted({s.method for s in steps}):
        title, plain, paper = METHODS.get(method, (method, "a mergekit merge method", None))
        methods.append({"name": method, "title": title, "plain": plain, "paper": paper})
    kin_ids = list(tree.kinship_ids)
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
        "test_rows": _test_rows(tree, node),
        "split_description": (tree.split or {}).get("description"),
        "tasks": [t for t in tree.tasks if t in node.scores] or sorted(node.scores),
        "score_metric": tree.score_metric,
        "score_lower_better": "loss" in tree.score_metric,
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
        "command": _reproduce_command(tree),
        "steps": steps,
        "random_methods": sorted({s.method for s in steps if s.method in _random_methods()}),
        "n_nodes": len(tree.nodes),
        "hub_merge_version": __version__,
        "arithmetic": arithmetic,
        "test_columns": _test_columns(tree, node.id),
        "split_description": (getattr(tree, "split", None) or {}).get("description"),
        "dam": _dam_context(node),
    }
    path = Path(template) if template else template_path()
    return ModelCard.from_template(data, template_path=str(path), **context)


def _test_columns(tree: FamilyTree, node_id: str) -> list[dict[str, Any]]:
    """This model and the baselines on the held-out test rows (when the run scored them)."""
    scores = getattr(tree, "test_scores", None) or {}
    ids = [node_id, *(n.id for n in tree.baselines() if n.id != node_id)]
    out = []
    for i in ids:
        if i in scores and scores[i]:
            values = [float(v) for v in scores[i].values()]
            out.append({"id": i, "scores": scores[i], "mean": sum(values) / len(values)})
    return out if out and out[0]["id"] == node_id else []


def _dam_context(node: LineageNode) -> dict[str, Any] | None:
    """The DAM section's facts, from the recipe's parameters (None for other methods)."""
    if node.method != "dam":
        return None
    params = dict(node.parameters or {})
    return {k: params.get(k) for k in ("steps", "lr", "train_batch_size", "temperature")} | {
        "sha256": str(params.get("sha256", ""))
    }


def _default_name(tree: FamilyTree, node: LineageNode) -> str:
    # Not the output folder's name (mergekit's habit): name it after what went in.
    parts = [n.id for n in tree.originals(node.id)]
    name = "-".join(parts)[:60].strip("-_.") or "model"
    return f"{name}-merge"


# --- validation ------------------------------------------------------------------------------------


_TOKEN_LIKE = re.compile(r"\bhf_[A-Za-z0-9]{8,}\b")


def validate_card(card: ModelCard | str) -> None:
    """Refuse a card the Hub would reject, or one that leaks a token, before anything is uploaded.

    Applies the Hub's metadata rules (``hub_merge.card_rules``, shared with the local Hub's
    ``/api/validate-yaml``), then hub-merge's own: a merge card names its relation and library,
    carries its lineage, and contains no access token.

    Raises:
        CardValidationError: with every problem found, one per line.
    """
    text = str(card)
    check = card_rules.check_readme(text)
    errors = list(check.errors)
    meta: dict[str, Any] = {}
    if not errors:
        meta = card_rules.parse_front_matter(text) or {}
        if meta.get("base_model_relation") not in (None, "merge"):
            errors.append("'base_model_relation' of a merged model must be 'merge'")
        if "library_name" not in meta:
            errors.append("'library_name' must be set (transformers, or peft for an adapter)")
        if not isinstance(meta.get("hub_merge"), dict) or not meta["hub_merge"].get("lineage"):
            errors.append("the 'hub_merge' block with the lineage is missing")
    secrets = [
        t for t in (os.environ.get("HF_TOKEN"), os.environ.get("HUGGING_FACE_HUB_TOKEN")) if t
    ]
    if _TOKEN_LIKE.search(text) or any(len(t) >= 4 and t in text for t in secrets):
        errors.append(
            "the card contains an access token; remove it (tokens never belong in a repo)"
        )
    if errors:
        raise CardValidationError("Model card is invalid:\n- " + "\n- ".join(errors))


# --- hub_merge.json and the files ----------------------------------------------------------------


def dependency_versions() -> dict[str, str | None]:
    """Installed versions of hub-merge and the libraries that decide a merge's tensors."""
    versions: dict[str, str | None] = {"hub-merge": __version__}
    for name in DEPENDENCIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def hub_merge_json(
    tree: FamilyTree,
    *,
    node_id: str | None = None,
    license: str | None = None,
    recipes: Mapping[str, Any] | None = None,
    versions: Mapping[str, str | None] | None = None,
) -> dict[str, Any]:
    """The machine-readable record beside the card: lineage, kinship, recipe, versions.

    ``lineage`` is the whole :class:`FamilyTree` (``FamilyTree.from_dict`` reads it back).
    """
    node = _node(tree, node_id)
    choice = resolve_license(tree, node.id, license)
    steps = _steps(tree, node.id, recipes)
    given = (recipes or {}).get(node.id)
    return _clean(
        {
            "format": 1,
            "node": node.id,
            "license": {
                "license": choice.license,
                "license_name": choice.license_name,
                "parents": choice.parents,
                "explicit": choice.explicit,
            },
            "lineage": tree.to_dict(),
            "kinship": _kinship_block(tree),
            "recipe": {
                "tree": given if isinstance(given, Mapping) else None,
                "steps": [
                    {"node": s.id, "recipe": s.recipe, "mergekit_yaml": s.mergekit_yaml}
                    for s in steps
                ],
                "command": _reproduce_command(tree),
            },
            "versions": dict(versions if versions is not None else dependency_versions()),
        }
    )


@dataclass(frozen=True)
class CardResult:
    """What :func:`write_card` wrote."""

    readme: Path
    hub_merge_json: Path
    node: str
    license: str
    images: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "readme": str(self.readme),
            "hub_merge_json": str(self.hub_merge_json),
            "node": self.node,
            "license": self.license,
            "images": list(self.images),
        }


def default_out_dir(run_dir: Path, tree: FamilyTree, node_id: str) -> Path:
    """Where a card goes: the materialised model's folder when the run wrote it, else ``card/``."""
    if node_id == tree.winner and (run_dir / "winner").is_dir():
        return run_dir / "winner"
    if (run_dir / "nodes" / node_id).is_dir():
        return run_dir / "nodes" / node_id
    return run_dir / "card"


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, text)


def _kinship_png(tree: FamilyTree, path: Path) -> bool:
    if len(tree.kinship_ids) < 2 or len(tree.kinship_matrix) != len(tree.kinship_ids):
        return False
    from types import SimpleNamespace

    from .plots import plot_kinship

    # plot_kinship reads only names/metric/matrix; the run keeps no full KinshipResult.
    view = SimpleNamespace(
        names=list(tree.kinship_ids), metric=tree.kinship_metric, matrix=tree.kinship_matrix
    )
    try:
        plot_kinship(view, path)  # type: ignore[arg-type]
    except (OSError, ValueError):
        return False  # a missing picture must not cost the user the card
    return True


def merge_arithmetic(folder: Path) -> str | None:
    """Whose arithmetic computed a merged model folder (its safetensors metadata), if recorded."""
    from safetensors import safe_open

    from .merge.kernels import ARITHMETIC_KEY

    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not files:
        return None
    with safe_open(str(files[0]), framework="pt") as handle:
        return (handle.metadata() or {}).get(ARITHMETIC_KEY)


def write_card(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    node_id: str | None = None,
    license: str | None = None,
    repo_id: str | None = None,
) -> CardResult:
    """Write ``README.md`` + ``hub_merge.json`` (and the run's plots) for a node of a run folder.

    Everything is rendered and validated before the first file is written; each file is written
    under a temporary name and renamed, so a failure leaves no half-written card.

    Args:
        run_dir: the search's run folder (``family_tree.json``, optional ``recipes.json``, plots).
        out_dir: default: ``RUN/winner/`` for the materialised winner, else ``RUN/card/``.
        node_id: default: the winner. license, repo_id: see :func:`build_card`.

    >>> write_card("run", repo_id="me/merged").readme  # doctest: +SKIP
    PosixPath('run/winner/README.md')
    """
    run = Path(run_dir)
    tree = FamilyTree.load(run / "family_tree.json")
    node = _node(tree, node_id)
    recipes: dict[str, Any] | None = None
    if (run / "recipes.json").is_file():
        try:
            recipes = json.loads((run / "recipes.json").read_text())
        except json.JSONDecodeError as err:
            raise ConfigError(f"{run / 'recipes.json'} is corrupt ({err}).") from err
    out = Path(out_dir) if out_dir else default_out_dir(run, tree, node.id)
    library = "peft" if (out / "adapter_config.json").is_file() else "transformers"
    sources = {name: run / name for name in IMAGES if (run / name).is_file()}
    sources.update({name: out / name for name in IMAGES if (out / name).is_file()})
    with tempfile.TemporaryDirectory() as scratch:
        if "kinship.png" not in sources and _kinship_png(tree, Path(scratch) / "kinship.png"):
            sources["kinship.png"] = Path(scratch) / "kinship.png"
        card = build_card(
            tree,
            node_id=node.id,
            license=license,
            repo_id=repo_id,
            recipes=recipes,
            library_name=library,
            images=list(sources),
            arithmetic=merge_arithmetic(out),
        )
        validate_card(card)
        record = hub_merge_json(tree, node_id=node.id, license=license, recipes=recipes)
        text = json.dumps(record, indent=2)
        if _TOKEN_LIKE.search(text):
            raise CardValidationError("hub_merge.json would contain an access token; refusing.")

        out.mkdir(parents=True, exist_ok=True)
        for name, src in sources.items():
            if src.resolve() != (out / name).resolve():
                with atomic_path(out / name) as tmp:
                    shutil.copyfile(src, tmp)
    _write_text(out / "hub_merge.json", text + "\n")
    _write_text(out / "README.md", str(card))
    choice = resolve_license(tree, node.id, license)
    return CardResult(
        readme=out / "README.md",
        hub_merge_json=out / "hub_merge.json",
        node=node.id,
        license=choice.license_name or choice.license,
        images=sorted(sources),
    )
