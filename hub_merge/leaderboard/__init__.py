"""``hub-merge compare``: several strategies on the user's own tasks, one leaderboard.

>>> from hub_merge.leaderboard import CompareConfig, compare_strategies
>>> board = compare_strategies(CompareConfig(base="org/base", experts=["org/a", "org/b"],
...     tasks=["a.jsonl", "b.jsonl"], out="cmp", strategies=["greedy", "evolve"]))  # doctest: +SKIP
>>> print(board.text())  # doctest: +SKIP

Named ``leaderboard`` (and the function ``compare_strategies``) because
:func:`hub_merge.comparison.compare` already names the comparison of one run's rows, which this
package reuses for every row: one comparison, displayed here over several strategies.
Layers: search -> leaderboard -> card, publish (``publish_row`` lives in ``hub_merge.publish``).
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "BoardRow": "board",
    "Leaderboard": "board",
    "SeedResult": "board",
    "CompareConfig": "config",
    "RunSpec": "config",
    "parse_budget": "config",
    "parse_strategies": "config",
    "compare_strategies": "run",
    "load_leaderboard": "rows",
    "row_model": "rows",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(name)
    return getattr(importlib.import_module(f".{module}", __name__), name)
