"""Merge searches: one core, many strategies. ``search(SearchConfig(strategy=..., ...))``.

- ``strategy``: the interface (``Strategy``, ``StrategyContext``, ``register_strategy``);
- ``strategies/``: one module per strategy (``greedy``, ``evolve``...), pure ask/tell, no I/O;
- ``core``: baselines, the ask/tell loop, budget, resume; over ``scoring`` (the score and
  kinship caches) and ``pool`` (the lineage);
- ``backend``: the merge engine, kinship and evaluation behind the core;
- ``settings``: ``RunSettings``, the run's settings as one frozen object (what ``config``'s
  checks return, what the core reads, the run folder fingerprints and the card spells as flags);
- ``api``: builds the pieces, after ``config`` (checks), ``resolve`` (models) and
  ``evaluators`` (tasks, backend), and lets the core run and record the search; ``plots``: the
  pictures.
"""

from __future__ import annotations

import importlib
from typing import Any

# Lazy: the core and the API import torch (evaluation), the strategies and their settings do not,
# so the CLI can list strategies and their settings without loading the engine.
_LAZY = {
    "SearchBackend": "core",
    "SearchCore": "core",
    "SearchResult": "result",
    "run_greedy": "core",
    "run_strategy": "core",
    "uniform_recipe": "core",
    "KinshipCache": "state",
    "RunFolder": "state",
    "STRATEGIES": "strategy",
    "Baseline": "strategy",
    "Expert": "strategy",
    "Strategy": "strategy",
    "StrategyContext": "strategy",
    "Workspace": "strategy",
    "get_strategy": "strategy",
    "load_strategies": "strategy",
    "register_strategy": "strategy",
    "strategy_names": "strategy",
    "SearchConfig": "api",
    "RunSettings": "settings",
    "check_config": "config",
    "greedy_search": "api",
    "search": "api",
    "GreedySettings": "strategies.greedy",
    "Original": "strategy",  # the name the greedy-only API used for Expert
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(name)
    found = importlib.import_module(f".{module}", __name__)
    return getattr(found, "Expert" if name == "Original" else name)
