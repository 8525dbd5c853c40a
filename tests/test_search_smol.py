"""The greedy search on the smol zoo (SmolLM2-135M LoRA experts): merging must beat every expert."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_smol_search_winner_beats_best_single_expert(tmp_path):
    from hub_merge.search import SearchConfig, greedy_search
    from hub_merge.zoo import build_smol_zoo

    zoo = build_smol_zoo()  # cached after the first build
    experts = zoo.experts or zoo.adapters
    names = sorted(experts)
    result = greedy_search(
        SearchConfig(
            base=str(zoo.base),
            experts=[str(experts[n]) for n in names],
            tasks=[str(zoo.tasks[n]) for n in names if n in zoo.tasks],
            out=str(tmp_path / "run"),
            settings={"k": 3, "generations": 2},
            limit=32,
            progress=False,
        )
    )
    tree = result.tree
    tree.validate()
    best_expert = max(tree.experts(), key=lambda n: n.fitness)
    winner = result.winner_node
    mean_loss = sum(winner.scores.values()) / len(winner.scores)
    best_mean_loss = sum(best_expert.scores.values()) / len(best_expert.scores)
    assert winner.kind == "merge"
    assert mean_loss < best_mean_loss, (winner.scores, best_expert.id, best_expert.scores)
    assert (tmp_path / "run" / "winner").is_dir()
