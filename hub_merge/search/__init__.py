"""Merge searches. ``greedy_search(SearchConfig(...))`` is the top-k greedy search with kinship.

The algorithm (``greedy``) is pure and reaches tensors only through a backend; ``backend`` wires
the merge engine, kinship and evaluation; ``api`` resolves models and tasks and runs it all in a
run folder; ``plots`` draws fitness-by-generation and the family tree.
"""

from __future__ import annotations

from typing import Any

from .greedy import (
    PAPER_SLERP_PARAMETERS,
    Candidate,
    GreedySearch,
    GreedySettings,
    Original,
    SearchBackend,
    SearchResult,
    recipe_hash,
    run_greedy,
)
from .state import KinshipCache, RunFolder

__all__ = [
    "PAPER_SLERP_PARAMETERS",
    "Candidate",
    "GreedySearch",
    "GreedySettings",
    "KinshipCache",
    "Original",
    "RunFolder",
    "SearchBackend",
    "SearchConfig",
    "SearchResult",
    "greedy_search",
    "recipe_hash",
    "run_greedy",
]


def __getattr__(name: str) -> Any:
    # The API pulls in torch/transformers and the merge engine; import it only when asked.
    if name in ("SearchConfig", "greedy_search"):
        from . import api

        return getattr(api, name)
    raise AttributeError(name)
