"""``RunSettings``: checked once, frozen, fingerprinted, and spelled back as the CLI's own flags."""

from __future__ import annotations

import dataclasses

import pytest

from hub_merge.errors import ConfigError
from hub_merge.search.config import SearchConfig, check_config
from hub_merge.search.settings import RunSettings


def _config(tiny_zoo, tmp_path, **kw) -> SearchConfig:
    names = ["add", "sort"]
    return SearchConfig(
        base=str(tiny_zoo.base),
        experts=[str(tiny_zoo.experts[n]) for n in names],
        tasks=[str(tiny_zoo.tasks[n]) for n in names],
        out=str(tmp_path / "run"),
        **kw,
    )


def _cli_config(monkeypatch, argv: list[str]) -> SearchConfig:
    """The SearchConfig ``hub-merge search ARGV`` builds (the search itself is not run)."""
    import hub_merge.search
    from hub_merge.cli import main

    seen: list[SearchConfig] = []

    def fake_search(config):
        seen.append(config)
        raise KeyboardInterrupt  # stop right there; the CLI exits 130

    monkeypatch.setattr(hub_merge.search, "search", fake_search)
    assert main(["search", *argv]) == 130
    return seen[0]


@pytest.mark.parametrize(
    ("strategy", "settings", "shared"),
    [
        (
            "greedy",
            {"k": 2, "method": "ties", "kinship_guided": False, "kinship_stop": None},
            {"budget": 30, "seed": 3, "combine": "harmonic", "limit": 4, "test_fraction": 0.4},
        ),
        ("greedy", {"parameters": {"t": 0.25}, "patience": 1}, {"kinship_metric": "cosine"}),
        ("evolve", {"method": "dare_ties", "layer_groups": 2}, {"split_seed": 5, "limit": 4}),
        ("swarm", {"space": "adapter", "population": 4, "max_steps": 1}, {"metric": "choice"}),
    ],
)
def test_cli_flags_read_back_into_the_same_settings(
    tiny_zoo, tmp_path, monkeypatch, strategy, settings, shared
):
    """``cli_args`` is the one way back to the command line: the CLI rebuilds the settings."""
    checked = check_config(
        _config(tiny_zoo, tmp_path, strategy=strategy, settings=settings, **shared)
    )
    run = checked.run
    first = _config(tiny_zoo, tmp_path)
    argv = ["--base", str(first.base), "--experts", *map(str, first.experts)]
    argv += ["--tasks", *first.tasks, "--out", first.out, *run.cli_args()]
    again = check_config(_cli_config(monkeypatch, argv)).run
    assert again == run
    assert RunSettings.from_dict(run.to_dict()) == run  # what family_tree.json keeps reads back


def test_settings_are_frozen_and_checked_before_anything_is_pulled(tmp_path):
    run = RunSettings("greedy", {"k": 2})
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.seed = 1  # type: ignore[misc]
    # a base nobody could pull: these fail on the settings, before any download is tried
    bad = {"base": "nobody/none", "experts": ["a/b", "c/d"], "tasks": [], "out": str(tmp_path)}
    with pytest.raises(ConfigError, match="combine 'geometric'"):
        RunSettings("greedy", combine="geometric")
    with pytest.raises(ConfigError, match="Task weights"):
        RunSettings("greedy", weights={"add": "heavy"})
    with pytest.raises(ConfigError, match="'layer_groups' is not a setting of strategy 'greedy'"):
        check_config(SearchConfig(**bad, settings={"layer_groups": 2}))
    with pytest.raises(ConfigError, match="at least two experts; got 1"):
        check_config(SearchConfig(**{**bad, "experts": ["a/b"]}))


def test_the_two_experts_rule_is_one_message_everywhere(monkeypatch, capsys):
    from hub_merge.cli import main
    from hub_merge.search import SearchCore
    from hub_merge.search.strategy import Expert

    with pytest.raises(ConfigError, match="A merge search needs at least two experts; got 1"):
        SearchCore([Expert("a", "a/a")], backend=None, settings=RunSettings())
    code = main(["search", "--base", "b/b", "--experts", "a/a", "--tasks", "t.jsonl", "--out", "o"])
    err = capsys.readouterr().err
    assert code != 0 and "A merge search needs at least two experts; got 1" in err
    assert "--discover" in err  # the CLI's hint rides along


def test_fingerprint_keeps_the_layout_older_run_folders_were_made_with():
    run = RunSettings("greedy", {"k": 2, "generations": 9}, budget=40, seed=1, limit=4)
    data = run.fingerprint_data(
        base="zoo/base@" + "a" * 40, experts=["x", "y"], tasks=[["add", "d1"]], test=[["add", "d2"]]
    )
    search = dict(run.to_dict())
    for key in ("generations", "patience", "strategy", "budget", "seed", "metric", "combine"):
        search.pop(key)
    for key in ("weights", "kinship_metric", "limit", "test_fraction", "split_seed"):
        search.pop(key)
    assert data == {
        "base": "zoo/base@" + "a" * 40,
        "experts": ["x", "y"],
        "tasks": [["add", "d1"]],
        "test": [["add", "d2"]],
        "limit": 4,
        "strategy": "greedy",
        "search": search,  # budget and resumable settings (generations, patience) left out
        "metric": "answer_loss",
        "weights": {},
        "kinship_metric": "pearson",
        "seed": 1,
    }
    harmonic = dataclasses.replace(run, combine="harmonic")
    assert (
        harmonic.fingerprint_data(base="b", experts=[], tasks=[], test=[])["combine"] == "harmonic"
    )


def test_a_run_of_an_unknown_strategy_still_reads_back():
    run = RunSettings.from_dict({"strategy": "annealing", "temperature": 2.0, "budget": 9})
    assert run.strategy == "annealing" and run.strategy_values() == {"temperature": 2.0}
    assert run.cli_args() == ["--strategy", "annealing", "--budget", "9"]
