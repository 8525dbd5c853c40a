"""One comparison (``hub_merge.comparison``): the card, the CLI, the Space and the demo show its rows.

The search runs with ``combine="harmonic"`` and task weights, the rule where the displays used to
disagree (a plain mean here, a negated fitness there), and every display must print the numbers
the comparison returns.
"""

from __future__ import annotations

import importlib.util
import io
import math
import re
import sys
from pathlib import Path

import pytest

from hub_merge.comparison import compare, format_score
from hub_merge.errors import ConfigError
from hub_merge.lineage import FamilyTree, LineageNode

SPACES = Path(__file__).resolve().parents[1] / "spaces"
WEIGHTS = {"add": 3.0, "sort": 1.0}


def _workflow():
    """``spaces/workflow.py``, imported as the Space imports it (its folder first on sys.path)."""
    if str(SPACES) not in sys.path:
        sys.path.insert(0, str(SPACES))
    return importlib.import_module("workflow")


def _harmonic_loss(scores: dict[str, float]) -> float:
    """−ln of the weighted harmonic mean of exp(−loss), written out independently of the code."""
    total = sum(WEIGHTS.values())
    h = total / sum(WEIGHTS[t] / math.exp(-scores[t]) for t in scores)
    return -math.log(h)


@pytest.fixture(scope="module")
def harmonic_run(tiny_zoo, tmp_path_factory):
    from hub_merge.search import SearchConfig, search

    out = tmp_path_factory.mktemp("cmp") / "run"
    result = search(
        SearchConfig(
            base=str(tiny_zoo.base),
            experts=[str(tiny_zoo.experts["add"]), str(tiny_zoo.experts["sort"])],
            tasks=[str(tiny_zoo.tasks["add"]), str(tiny_zoo.tasks["sort"])],
            out=str(out),
            settings={"k": 2, "generations": 1},
            combine="harmonic",
            weights=WEIGHTS,
            limit=4,
            device="cpu",
            progress=False,
        )
    )
    return result, out


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _card_test_table(text: str) -> dict[str, list[str]]:
    """The card's held-out table: row name -> cells (per task, combined, dev combined)."""
    section = text[text.index("### Held-out test rows") : text.index("### Dev rows")]
    rows = [line for line in section.splitlines() if line.startswith("| ")][1:]  # no header
    return {_cells(r)[0].strip("`*"): _cells(r)[1:] for r in rows}


def test_card_cli_space_and_demo_show_the_same_numbers(harmonic_run, capsys):
    from rich.console import Console

    from hub_merge.card import build_card
    from hub_merge.cli.search import echo_summary
    from hub_merge.demo import comparison_table

    result, out = harmonic_run
    tree = FamilyTree.load(out / "family_tree.json")
    cmp = compare(tree)
    assert cmp.combine == "harmonic" and dict(cmp.weights) == WEIGHTS and cmp.split == "test"
    rows = cmp.shown("test")
    assert [r.role for r in rows][0] == "winner" and rows[0].id == tree.winner
    assert {r.id for r in rows} >= {"add", "sort", "uniform", "oracle"} - {tree.winner}
    for row in rows:  # the combine rule and the weights, applied once, in the loss's units
        assert row.test_combined == pytest.approx(_harmonic_loss(dict(row.test)))
        assert row.dev_combined == pytest.approx(_harmonic_loss(dict(row.dev)))
        assert row.test_combined == pytest.approx(-math.log(row.test_fitness))
    winner = tree.nodes[tree.winner]
    assert rows[0].dev_fitness == pytest.approx(winner.fitness)  # what the search ranked by
    oracle = next(r for r in rows if r.role == "oracle")
    for task, expert in oracle.routes.items():  # each task by the expert best at it on dev
        assert tree.nodes[expert].scores[task] == min(
            tree.nodes[e].scores[task] for e in ("add", "sort")
        )
        assert oracle.test[task] == tree.test_scores[expert][task]

    # the card: ONE test table, whose cells are the comparison's numbers
    text = build_card(tree, repo_id="me/cmp").text
    assert text.count("### Held-out test rows") == 1 and "| task |" not in text
    table = _card_test_table(text)
    assert "harmonic" in text and "add 3.0" in text
    # the CLI summary
    echo_summary(result, str(out))
    cli = capsys.readouterr().out.splitlines()
    # the Space's table
    space = {r[0].removesuffix(" (winner)"): r for r in _workflow().baselines_table(out)}
    # the demo's table
    console = Console(file=io.StringIO(), width=200, record=True)
    console.print(comparison_table(cmp))
    demo = console.export_text().splitlines()

    assert len(table) == len(space) == len(rows)
    for row in rows:
        per_task = [format_score(row.test[t]) for t in cmp.tasks]
        combined, dev = format_score(row.test_combined), format_score(row.dev_combined)
        name = "this model" if row.subject else row.label
        assert table[name] == [*per_task, combined, dev], table[name]
        line = next(x for x in cli if re.match(rf"[* ]{re.escape(row.label)} ", x))
        assert line.split()[-len(per_task) - 2 :] == [
            dev,
            combined,
            *(f"{t}={v}" for t, v in zip(cmp.tasks, per_task, strict=True)),
        ]
        assert space[row.label][1:] == [
            dev,
            combined,
            ", ".join(f"{t} {v}" for t, v in zip(cmp.tasks, per_task, strict=True)),
        ]
        label = f"winner {row.id}" if row.subject else row.label
        cells = next(x for x in demo if x.strip("│ ").startswith(label))
        assert [c.strip() for c in cells.strip("│ ").split("│")][1:] == [*per_task, combined]


def _tree(combine: str = "mean", weights: dict | None = None, strategy: str = "greedy"):
    tree = FamilyTree(tasks=["a", "b"], score_metric="answer_loss", strategy=strategy)
    tree.settings = {"combine": combine, "weights": weights or {}}
    for name, scores in (("x", {"a": 1.0, "b": 3.0}), ("y", {"a": 2.0, "b": 0.5})):
        tree.add(LineageNode(id=name, kind="expert", name=name, scores=scores, baseline="expert"))
        tree.test_scores[name] = {t: v + 0.1 for t, v in scores.items()}
    tree.add(
        LineageNode(
            id="m",
            kind="merge",
            name="m",
            parents=["x", "y"],
            method="linear",
            scores={"a": 1.2, "b": 1.0},
        )
    )
    tree.winner = "m"
    tree.test_scores["m"] = {"a": 1.3, "b": 1.1}
    return tree


def test_a_loss_is_lower_is_better_and_weights_count_once():
    cmp = compare(_tree(weights={"a": 3.0}))
    assert cmp.direction == "lower" and cmp.combined_label == "weighted mean"
    rows = {r.id: r for r in cmp.rows}
    assert rows["m"].dev_combined == pytest.approx((3 * 1.2 + 1.0) / 4)
    assert rows["m"].dev_fitness == pytest.approx(-rows["m"].dev_combined)
    # the oracle router: task a by x (1.0 < 2.0), task b by y (0.5 < 3.0), on dev and test
    assert dict(rows["oracle"].routes) == {"a": "x", "b": "y"}
    assert dict(rows["oracle"].test) == pytest.approx({"a": 1.1, "b": 0.6})
    assert cmp.best("test").id == "oracle"
    assert compare(_tree(), node_id="x").subject().id == "x"  # a card of another node


def test_several_runs_share_one_table_only_when_scored_alike():
    greedy, evolve = _tree(), _tree(strategy="evolve")
    evolve.test_scores["m"] = {"a": 0.5, "b": 0.5}  # better than the oracle (0.85)
    cmp = compare([greedy, evolve])
    subjects = [r for r in cmp.rows if r.subject]
    assert [r.strategy for r in subjects] == ["greedy", "evolve"]
    assert cmp.best("test").strategy == "evolve"
    with pytest.raises(ConfigError, match="scoring rule"):
        compare([greedy, _tree(combine="harmonic")])
