"""``search(SearchConfig(...))``: resolve models and tasks, run a strategy in a run folder, write the winner.

This is the wiring around the pure core (``hub_merge.search.core``), one step per module:

- ``config``: ``SearchConfig`` and every check made before a weight is pulled;
- ``resolve``: the base and the experts, pulled, pinned (shas for lineage) and fingerprinted;
- ``evaluators``: the dev/test evaluators and the backend over them (serial, or Ray workers);
- here: the pieces put together; the core (``SearchCore.run_search``) runs the search and
  records it in the run folder (checkpoints, test scores, plots, ``RUN/winner/``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..atomic import atomic_write
from ..errors import ConfigError
from ..tensors import dtype_name
from .config import CheckedConfig, SearchConfig, check_config
from .core import SearchCore, SearchResult
from .evaluators import Evaluators, build_backend, build_evaluators
from .memory import MEMORY_SHARE, default_max_memory, parse_bytes
from .resolve import SearchModels, layer_filters, pull_models
from .state import RunFolder
from .strategy import Workspace

logger = logging.getLogger(__name__)

# Importable from here as before the split (tests, the CLI's callers).
__all__ = [
    "MEMORY_SHARE",
    "SearchConfig",
    "default_max_memory",
    "greedy_search",
    "layer_filters",
    "parse_bytes",
    "run_checked",
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
        return run_checked(config, checked, models, session, backend, evaluators)
    finally:
        if pool is not None:
            pool.close()


def run_checked(
    config: SearchConfig,
    checked: CheckedConfig,
    models: SearchModels,
    session: Any,
    backend: Any,
    evaluators: Evaluators,
    *,
    caches: str | Path | None = None,
) -> SearchResult:
    """Build the core over a ready backend (serial, or Ray workers) and let it run and record.

    ``hub-merge compare`` calls it once per strategy and seed over one backend, with ``caches``
    (the compare folder) holding the one score cache every run reads and fills.
    """
    settings, experts, split = checked.run, models.experts, evaluators.split
    core = SearchCore(  # builds the strategy: its settings are checked here, nothing scored yet
        experts,
        backend,
        settings,
        base=models.base_expert,
        tasks=[name for name, _ in evaluators.task_rows],
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
            train_tasks=checked.train,
            progress=config.progress,
            base_state=session.base.state,
        ),
        split={**split.how, "description": split.describe()},
        # every merge step is stored in the session's dtype: the card's mergekit YAML says so
        facts={"dtype": dtype_name(session.dtype)},
    )
    fingerprinted = settings.fingerprint_data(
        base=models.base_expert.source,
        experts=[e.source for e in experts],
        tasks=evaluators.task_rows,
        test=evaluators.test_rows,
        train=[[t.name, t.digest] for t in checked.train],
    )
    core.attach(RunFolder(config.out, fingerprinted, resume=config.resume, caches=caches))
    workspace = core.ctx.workspace
    workspace.artefacts = core.run.root / settings.strategy  # the strategy's own files
    workspace.write = atomic_write
    return core.run_search(materialize=config.materialize)


def greedy_search(config: SearchConfig) -> SearchResult:
    """The greedy search (``search`` with ``strategy="greedy"``); kept as a thin alias."""
    if config.strategy != "greedy":
        raise ConfigError(f"greedy_search runs the greedy strategy, not {config.strategy!r}.")
    return search(config)
