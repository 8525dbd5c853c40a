"""The rows of ``search_quality.py``'s table: a registry a later strategy adds its row to.

A search strategy adds a row with :func:`search_row` (it runs ``hub_merge.search.search`` through
:meth:`Bench.search`); a row that is not a search (MoE, MoA) registers any :class:`RowBuilder`
whose ``run`` returns an :class:`Outcome` itself. Kept apart from the bench and the table so a
new row touches only this file.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search_quality_bench import Bench, Outcome


@dataclass(frozen=True)
class RowBuilder:
    """One table row: how to run it for one seed, and whether the seed matters."""

    title: str
    run: Callable[[Bench, int], Outcome]
    stochastic: bool = False


ROWS: dict[str, RowBuilder] = {}


def register_row(key: str, builder: RowBuilder) -> RowBuilder:
    """Add a row to the table; later strategies (swarm, DAM, MoE, MoA) call this."""
    if key in ROWS:
        raise ValueError(f"row {key!r} is already registered")
    ROWS[key] = builder
    return builder


def search_row(
    key: str,
    title: str,
    strategy: str,
    settings: Callable[[Bench], dict[str, Any]],
    *,
    stochastic: bool = False,
    budget: bool = False,
    train: bool = False,
) -> RowBuilder:
    """Register a row that runs ``hub_merge.search.search`` with ``strategy`` and its settings.

    ``budget``: the run gets ``--budget`` evaluations (strategies that need a budget).
    ``train``: the run gets the zoo's training rows (``--train-tasks``; strategies that train).
    """

    def run(bench: Bench, seed: int) -> Outcome:
        values, limit = settings(bench), bench.budget if budget else None
        outcome = bench.search(key, strategy, values, seed=seed, budget=limit, train=train)
        outcome.extra.update(settings=values, budget=limit)
        return outcome

    return register_row(key, RowBuilder(title, run, stochastic))


search_row(
    "greedy",
    "vanilla greedy",
    "greedy",
    lambda b: {"generations": b.generations, "kinship_guided": False, "kinship_stop": None},
)
search_row(
    "greedy-kinship",
    "kinship greedy",
    "greedy",
    lambda b: {"generations": b.generations, "kinship_guided": True, "kinship_stop": 0.9},
)
search_row(  # not a default row: kinship greedy without its early stop, to see what the stop saves
    "greedy-kinship-nostop",
    "kinship greedy, no early stop",
    "greedy",
    lambda b: {"generations": b.generations, "kinship_guided": True, "kinship_stop": None},
)
search_row(
    "evolve",
    "evolve (global genes)",
    "evolve",
    lambda b: {"method": b.evolve_method, "layer_groups": 1},  # the default is per layer group
    stochastic=True,
    budget=True,
)
search_row(
    "evolve-layers",
    "evolve (per layer group)",
    "evolve",
    lambda b: {"method": b.evolve_method, "layer_groups": b.layer_groups},
    stochastic=True,
    budget=True,
)
search_row(  # Model Swarms (Feng et al. 2024): the paper's PSO on mixing coefficients
    "swarm",
    "Model Swarms (dense space)",
    "swarm",
    lambda b: {"space": "dense"},
    stochastic=True,
    budget=True,
)
search_row(  # the paper's way for LoRA experts: A = Σα A_j, B = Σα B_j; the winner is an adapter
    "swarm-adapter",
    "Model Swarms (adapter space)",
    "swarm",
    lambda b: {"space": "adapter"},
    stochastic=True,
    budget=True,
)
search_row(  # DAM (Arcee 2024): trained, not searched; its cost is gradient steps (in the note)
    "dam",
    "DAM (trained coefficients)",
    "dam",
    lambda b: {
        "steps": b.dam_steps,
        "lr": 5e-3,
        "train_batch_size": 4,
        "max_rows": b.dam_rows,
    },
    train=True,
)
search_row(  # not in the paper: one more particle starting at the uniform average
    "swarm-uniform",
    "Model Swarms (dense, + uniform particle)",
    "swarm",
    lambda b: {"space": "dense", "population": len(b.experts) + 1, "uniform_particle": True},
    stochastic=True,
    budget=True,
)


def _alternative_row(key: str, title: str) -> RowBuilder:
    """MoE / MoA (issue 16): not one merged model; their inference cost is in the row's note."""

    def run(bench: Bench, seed: int) -> Outcome:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from moe_quality import search_quality_outcome

        return search_quality_outcome(bench, key, Outcome)

    return register_row(key, RowBuilder(title, run))


_alternative_row("moe-top1", "MoE assembly, top-1 routing (1 expert MLP per token)")
_alternative_row("moe-top2", "MoE assembly, top-2 routing (2 expert MLPs per token)")
_alternative_row("moa", "MoA: experts propose, base aggregates (exact match on test)")

DEFAULT_ROWS = ["greedy", "greedy-kinship", "evolve", "evolve-layers"]
