"""``search(SearchConfig(...))``: resolve models and tasks, run a strategy in a run folder, write the winner.

This is the wiring around the pure core (``hub_merge.search.core``), one step per module:

- ``config``: ``SearchConfig`` and every check made before a weight is pulled;
- ``resolve``: the base and the experts, pulled, pinned (shas for lineage) and fingerprinted;
- ``evaluators``: the dev/test evaluators and the backend over them (serial, or Ray workers);
- here: the run folder with its caches, the plots and the materialised winner (``RUN/winner/``).
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..atomic import atomic_write
from ..errors import ConfigError
from ..tensors import dtype_name
from .config import CheckedConfig, SearchConfig, check_config
from .core import SearchCore, SearchResult
from .evaluators import Evaluators, build_backend, build_evaluators
from .memory import MEMORY_SHARE, _available_ram, default_max_memory, parse_bytes
from .resolve import SearchModels, _original, _unique_names, layer_filters, pull_models
from .state import RunFolder, write_json
from .strategy import Workspace, fingerprinted_settings

logger = logging.getLogger(__name__)

# Importable from here as before the split (tests, the CLI's callers).
__all__ = [
    "MEMORY_SHARE",
    "SearchConfig",
    "_available_ram",
    "_original",
    "_unique_names",
    "default_max_memory",
    "greedy_search",
    "layer_filters",
    "parse_bytes",
    "search",
]


def search(config: SearchConfig) -> SearchResult:
    """Run (or resume) a merge search with ``config.strategy``; see ``hub_merge.search.core``.

    Returns:
        `SearchResult`: winner id, family tree (baselines included), stop reason, evaluations;
        the run folder holds ``family_tree.json``, ``fitness.png``, ``family_tree.png``,
        ``recipes.json`` and ``winner/``.

    Raises:
        TaskFileError, ConfigError: bad tasks or settings (before anything is scored or written).
        SearchStateError: resuming a run made with other settings, or overwriting one.
        KeyboardInterrupt: after saving state; resume with ``resume=True``.

    >>> r = search(SearchConfig(base="zoo/base", experts=["a", "b", "c"], tasks=["t.jsonl"],
    ...                         out="run", strategy="greedy", settings={"k": 3}))  # doctest: +SKIP
    """
    from transformers import AutoTokenizer

    from ..merge import MergeSession

    checked = check_config(config)
    models = pull_models(config)
    session = MergeSession(models.base.path, device=config.device)
    tokenizer = AutoTokenizer.from_pretrained(models.base.path)
    evaluators = build_evaluators(config, checked, tokenizer, session.device)
    max_memory = checked.max_memory
    if max_memory is None:
        max_memory = default_max_memory(session)
    backend, pool = build_backend(config, checked, models, session, evaluators, max_memory)
    try:
        return _run(config, checked, models, session, backend, evaluators)
    finally:
        if pool is not None:
            pool.close()


def _run(
    config: SearchConfig,
    checked: CheckedConfig,
    models: SearchModels,
    session: Any,
    backend: Any,
    evaluators: Evaluators,
) -> SearchResult:
    """The search itself, over a ready backend (serial, or fanned out to Ray workers)."""
    strategy_cls, settings, metric = checked.strategy_cls, checked.settings, checked.metric
    experts, train = models.experts, checked.train
    core = SearchCore(  # builds the strategy: its settings are checked here, nothing scored yet
        experts,
        backend,
        config.strategy,
        settings,
        base=models.base_expert,
        tasks=[name for name, _ in evaluators.task_rows],
        metric=metric,
        weights=config.weights,
        combine=config.combine,
        kinship_metric=config.kinship_metric,
        seed=config.seed,
        budget=config.budget,
        layers=layer_filters(session.names),
        fingerprints=models.fingerprints,
        progress=config.progress,
        cancel=config.cancel,
        workspace=Workspace(  # read-only inputs: strategies check their experts' files here
            device=str(session.device),
            base_folder=Path(models.base.path),
            expert_folders={
                e.name: Path(p.path) for e, p in zip(experts, models.pulled, strict=True)
            },
            dev_tasks=list(checked.tasks),
            train_tasks=train,
            progress=config.progress,
        ),
    )
    fingerprinted = {
        "base": models.base_expert.source,
        "experts": [e.source for e in experts],
        "tasks": evaluators.task_rows,
        "test": evaluators.test_rows,
        "limit": config.limit,
        "strategy": strategy_cls.name,
        "search": fingerprinted_settings(strategy_cls, settings),
        "metric": metric,
        "weights": config.weights,
        "kinship_metric": config.kinship_metric,
        "seed": config.seed,
    }
    if config.combine != "mean":  # runs made before --combine existed stay resumable
        fingerprinted["combine"] = config.combine
    if train:  # likewise for runs made before --train-tasks existed
        fingerprinted["train"] = [[t.name, t.digest] for t in train]
    core.attach(RunFolder(config.out, fingerprinted, resume=config.resume))
    workspace = core.ctx.workspace
    workspace.artefacts = core.run.root / strategy_cls.name  # the strategy's own files
    workspace.write = atomic_write
    result = core.run_search()
    tree = result.tree
    split = evaluators.split
    tree.split = {**split.how, "description": split.describe()}
    run: RunFolder = core.run  # type: ignore[assignment]
    names = [e.name for e in experts]
    tree.kinship_ids = names
    tree.kinship_matrix = [
        core.kinship(core.recipes[a], [core.recipes[b] for b in names]) for a in names
    ]
    tree.settings = {
        **asdict(settings),
        "strategy": strategy_cls.name,
        "budget": config.budget,
        "seed": config.seed,
        "metric": metric,
        "combine": config.combine,
        "kinship_metric": config.kinship_metric,
        "weights": config.weights,
        "limit": config.limit,
        "test_fraction": None if config.test_tasks else config.test_fraction,
        "stop_reason": result.stop_reason,
        # every merge step is stored in the session's dtype: the card's mergekit YAML says so
        "dtype": dtype_name(session.dtype),
    }
    write_json(run.root / "recipes.json", {k: r.to_dict() for k, r in core.recipes.items()})
    run.save_tree(tree)
    _plots(tree, run.root)
    _materialize(config, core, backend, result)
    materialized = [tree.winner if w == "winner" else w for w in config.materialize]
    core.score_test(materialized)  # a node written out may be published: its card needs them
    run.save_tree(tree)
    run.save_state(winner_path=result.winner_path)
    return result


def _materialize(
    config: SearchConfig, core: SearchCore, backend: Any, result: SearchResult
) -> None:
    """Write each node of ``config.materialize`` to the run folder, unless it is there already.

    A ``*.recipe.json`` marker beside each folder says what it holds, so a resumed run rewrites
    a node only when its recipe changed (or its folder was left half-written).
    """
    run: RunFolder = core.run  # type: ignore[assignment]
    for wanted in config.materialize:
        node_id = result.tree.winner if wanted == "winner" else wanted
        if node_id not in core.recipes:
            raise ConfigError(
                f"Cannot materialise {wanted!r}: no such node in the run (nodes: {list(core.recipes)[:8]}...)."
            )
        out = run.root / ("winner" if wanted == "winner" else f"nodes/{node_id}")
        marker = run.root / (
            f"{out.name}.recipe.json" if wanted == "winner" else f"nodes/{node_id}.recipe.json"
        )
        recipe = core.recipes[node_id].to_dict()
        if not (out.exists() and marker.is_file() and json.loads(marker.read_text()) == recipe):
            shutil.rmtree(out, ignore_errors=True)
            out.parent.mkdir(parents=True, exist_ok=True)
            backend.materialize(core.recipes[node_id], out)
            write_json(marker, recipe)
        if wanted == "winner":
            result.winner_path = str(out)


def greedy_search(config: SearchConfig) -> SearchResult:
    """The greedy search (``search`` with ``strategy="greedy"``); kept as a thin alias."""
    if config.strategy != "greedy":
        raise ConfigError(f"greedy_search runs the greedy strategy, not {config.strategy!r}.")
    return search(config)


def _plots(tree: Any, root: Path) -> None:
    from .plots import has_trajectory, plot_family_tree, plot_fitness, plot_trajectory

    try:
        plot_fitness(tree, root / "fitness.png")
        plot_family_tree(tree, root / "family_tree.png")
        if has_trajectory(tree):  # a search over mixing coefficients (the swarm)
            plot_trajectory(tree, root / "trajectory.png")
    except (OSError, ValueError) as err:  # a plot must never cost the user a finished search
        logger.warning("Search finished but plotting failed (%s); the run folder is intact.", err)
