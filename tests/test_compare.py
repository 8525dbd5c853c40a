"""``hub-merge compare`` on the tiny zoo: every strategy, MoE and MoA on one split, one cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hub_merge.cli import main
from hub_merge.comparison import compare
from hub_merge.dam.data import draw
from hub_merge.errors import ConfigError, SearchStateError
from hub_merge.leaderboard import CompareConfig, compare_strategies
from tests.fixtures.compare import SMALL_SETTINGS, TINY_COMPARE_TASKS, tiny_compare_inputs

ROWS = ["greedy", "evolve", "swarm", "dam", "dam+train", *TINY_COMPARE_TASKS]
ROWS += ["uniform", "oracle", "moe", "moa"]


def test_compare_runs_every_strategy_moe_and_moa_on_one_split_and_cache(tiny_compare):
    board, folder = tiny_compare.board, tiny_compare.folder
    assert [r.name for r in board.rows] == ROWS
    for name in ("leaderboard.md", "leaderboard.json", "leaderboard.png"):
        assert (folder / name).stat().st_size > 0
    assert (folder / "leaderboard.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((folder / "leaderboard.json").read_text())
    assert saved == json.loads(json.dumps(board.to_dict()))
    # one score cache under the compare folder, none in the runs' subfolders
    assert (folder / "scores.json").is_file()
    assert not list(folder.glob("*/scores.json"))
    # one set of baselines: scored by the first run; each DAM run computed its one merge only
    records = {p.parent.name: json.loads(p.read_text()) for p in folder.glob("*/row.json")}
    n_baselines = len(TINY_COMPARE_TASKS) + 1
    assert records["greedy-seed0"]["computed"] > n_baselines
    assert records["dam-seed0"]["computed"] == records["dam-train-seed0"]["computed"] == 1
    assert records["dam-seed0"]["evaluations"] == n_baselines + 1
    rows = {r.name: r for r in board.rows}
    # every model row is scored on the same test rows, with its cost beside it
    tasks = set(board.tasks)
    for name in ROWS:
        if name != "moa":
            assert set(rows[name].seeds[0].test) == tasks, name
            assert set(rows[name].seeds[0].exact_match) == tasks, name
    assert rows["moa"].calls_per_query == len(TINY_COMPARE_TASKS) + 1
    assert set(rows["moa"].seeds[0].exact_match) == tasks
    # MoA's loss column: the aggregator's answer-token loss given the proposals, on test rows
    moa = rows["moa"].seeds[0]
    assert set(moa.test) == tasks and all(v > 0 for v in moa.test.values())
    assert moa.test_fitness is not None and not moa.dev
    # the compare's MoA settings reach it: 4 calls a query, each at most 6 new tokens
    assert "at most 6 new tokens" in rows["moa"].note
    report = json.loads((folder / "moa" / "moa.json").read_text())
    assert 0 < report["generated_tokens_per_query"] <= 6 * rows["moa"].calls_per_query
    assert rows["moe"].params > rows["moe"].active_params >= rows["greedy"].params
    assert rows["dam"].seeds[0].train_steps == 3
    # which rows each read: searches dev rows only, DAM the task-to-expert mapping too
    dev_rows = 4 * len(TINY_COMPARE_TASKS)
    assert (rows["greedy"].dev_rows, rows["greedy"].train_rows, rows["greedy"].task_map) == (
        dev_rows,
        0,
        False,
    )
    assert (rows["dam"].train_rows, rows["dam"].task_map) == (0, True)
    # the training rows DAM's 3 steps of 4 rows drew (of max_rows 8 per expert), not all 8
    drawn = [
        {i for step in range(3) for i in draw(8, 4, seed=0, expert=k, step=step, micro=0)}
        for k in range(len(TINY_COMPARE_TASKS))
    ]
    assert rows["dam+train"].train_rows == sum(map(len, drawn))
    assert rows["dam+train"].train_rows < 8 * len(TINY_COMPARE_TASKS)
    text = board.text()
    assert "dam+train (dam + train rows)" in text and "recommended (best on dev)" in text
    assert "never on the test rows" in text


def test_dam_trains_on_the_dev_rows_unless_given_training_rows(tiny_compare):
    """DAM is fair by default: its own row reads the rows the searches read."""
    folder = tiny_compare.folder
    fair = json.loads((folder / "dam-seed0" / "state.json").read_text())["settings"]
    given = json.loads((folder / "dam-train-seed0" / "state.json").read_text())["settings"]
    assert "train" not in fair  # no training rows reached the run
    assert {name for name, _ in given["train"]} == set(TINY_COMPARE_TASKS)
    # the two runs trained different coefficients (other rows), both scored on the same test rows
    a = json.loads((folder / "dam-seed0" / "recipes.json").read_text())
    b = json.loads((folder / "dam-train-seed0" / "recipes.json").read_text())
    digest = lambda recipes: next(  # noqa: E731
        r["parameters"]["sha256"] for r in recipes.values() if r.get("method") == "dam"
    )
    assert digest(a) != digest(b)


def test_the_leaderboards_baselines_equal_searchs(tiny_compare, tmp_path):
    from hub_merge.search import SearchConfig, search

    inputs = tiny_compare.inputs
    result = search(
        SearchConfig(
            base=inputs["base"],
            experts=inputs["experts"],
            tasks=inputs["tasks"],
            out=str(tmp_path / "run"),
            strategy="greedy",
            settings={"generations": 1},
            limit=inputs["limit"],
            device="cpu",
            progress=False,
        )
    )
    own = {r.id: r for r in compare(result.tree).rows if r.role in ("expert", "uniform", "oracle")}
    if result.winner == "uniform":
        own["uniform"] = compare(result.tree).subject()
    board = {r.name: r for r in tiny_compare.board.rows}
    assert sorted(own) == sorted([*TINY_COMPARE_TASKS, "uniform", "oracle"])
    for name, row in own.items():
        seed = board[name].seeds[0]
        assert dict(seed.dev) == dict(row.dev), name
        assert dict(seed.test) == dict(row.test), name
        assert seed.test_fitness == row.test_fitness, name


def test_a_resumed_compare_evaluates_nothing(tiny_compare, monkeypatch):
    from hub_merge.search.backend import EngineBackend

    def refuse(*args, **kwargs):
        raise AssertionError("a finished compare scored a candidate again")

    monkeypatch.setattr(EngineBackend, "evaluate", refuse)
    monkeypatch.setattr(EngineBackend, "evaluate_test", refuse)
    monkeypatch.setattr("hub_merge.dam.train_dam", refuse)
    monkeypatch.setattr("hub_merge.moe.build_moe", refuse)
    board = compare_strategies(CompareConfig(**tiny_compare.inputs, resume=True))
    assert board.evaluations_now == 0
    assert [r.to_dict() for r in board.rows] == [r.to_dict() for r in tiny_compare.board.rows]


def test_ctrl_c_keeps_finished_rows_and_resume_finishes_the_rest(tiny_zoo, tmp_path, monkeypatch):
    out = tmp_path / "cmp"
    inputs = tiny_compare_inputs(tiny_zoo, out)
    args = ["compare", "--base", inputs["base"], "--experts", *inputs["experts"]]
    args += ["--tasks", *inputs["tasks"], "--out", str(out), "--limit", "4", "--device", "cpu"]
    args += ["--strategies", "greedy,dam", "--no-exact-match", "--no-progress"]
    args += ["--settings", json.dumps({k: SMALL_SETTINGS[k] for k in ("greedy", "dam")})]

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:  # Ctrl-C while DAM trains (after its baselines)
        m.setattr("hub_merge.dam.train_dam", interrupted)
        assert main(args) == 130
    assert (out / "greedy-seed0" / "row.json").is_file()
    assert not (out / "dam-seed0" / "row.json").exists()
    assert (out / "dam-seed0" / "state.json").is_file()  # checkpointed, resumable on its own
    kept = json.loads((out / "leaderboard.json").read_text())
    assert [r["name"] for r in kept["rows"]][0] == "greedy"
    assert main(args) == SearchStateError.exit_code  # no restart over it: --resume finishes it

    assert main([*args, "--resume", "--json"]) == 0
    board = json.loads((out / "leaderboard.json").read_text())
    assert [r["name"] for r in board["rows"]][:2] == ["greedy", "dam"]
    assert board["evaluations_now"] == 1  # DAM's merge; greedy and the baselines were kept
    assert main([*args, "--resume", "--json"]) == 0
    assert json.loads((out / "leaderboard.json").read_text())["evaluations_now"] == 0


def test_the_recommended_row_is_chosen_on_dev_scores_not_test(tmp_path):
    """A constructed case where the row best on dev is not the row best on test."""
    from hub_merge.leaderboard import BoardRow, Leaderboard, SeedResult
    from hub_merge.leaderboard.rows import row_model

    def row(name, kind, dev, test, run=None):
        seed = SeedResult(
            seed=0,
            dev={"a": dev},
            test={"a": test},
            dev_fitness=-dev,
            test_fitness=-test,
            run=run,
            node="g1-1" if run else None,
            model=f"{run}/winner" if run else None,
        )
        return BoardRow(name=name, kind=kind, label=name, seeds=[seed])

    board = Leaderboard(
        metric="answer_loss",
        combine="mean",
        weights={},
        tasks=["a"],
        rows=[
            row("evolve", "strategy", dev=1.0, test=2.0, run="evolve-seed0"),
            row("dam", "strategy", dev=1.5, test=1.2, run="dam-seed0"),
            row("a", "expert", dev=0.5, test=0.5),  # an expert is never recommended
            row("uniform", "uniform", dev=3.0, test=3.0, run="greedy-seed0"),
        ],
    )
    assert board.recommended().name == "evolve"
    assert board.best_on_test().name == "dam"
    md = board.markdown()
    assert "evolve [recommended (best on dev)]" in md and "dam [best on test]" in md
    assert "evolve is best on the dev rows but dam is best on the test rows" in md
    board.write(tmp_path)
    (tmp_path / "compare.json").write_text("{}")
    chosen = row_model(tmp_path)
    assert (chosen.row, chosen.run, chosen.node) == ("evolve", tmp_path / "evolve-seed0", "g1-1")
    assert "published as the recommended row" in chosen.section
    assert row_model(tmp_path, "dam").run == tmp_path / "dam-seed0"
    with pytest.raises(ConfigError, match="No row 'nope' in the leaderboard; rows are: evolve"):
        row_model(tmp_path, "nope")
    with pytest.raises(ConfigError, match="one of the original experts"):
        row_model(tmp_path, "a")


def _compare_args(zoo, out: Path, *extra: str) -> list[str]:
    inputs = tiny_compare_inputs(zoo, out)
    return ["compare", "--base", inputs["base"], "--experts", *inputs["experts"], "--tasks",
            *inputs["tasks"], "--out", str(out), "--device", "cpu", *extra]  # fmt: skip


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--strategies", "greedy,nope"], "Unknown search strategy 'nope'"),
        (["--strategies", "greedy", "--budget", "dam=30"], "--budget names dam, which is not"),
        (["--seeds", "0"], "--seeds must be at least 1; got 0"),
        (["--budget", "lots"], "--budget takes N or STRATEGY=N"),
        (
            ["--strategies", "greedy", "--settings", '{"dam": {"steps": 2}}'],
            "Settings given for dam",
        ),
        (
            ["--strategies", "greedy", "--settings", '{"moa": {"max_new_tokens": 8}}'],
            "Settings given for moa, which is not among --strategies (greedy) or --moa",
        ),
        (
            ["--strategies", "greedy", "--moa", "--settings", '{"moa": {"max_tokens": 8}}'],
            "Unknown MoA setting(s) max_tokens",
        ),
        (
            ["--strategies", "greedy", "--moa", "--settings", '{"moa": {"temperature": -1}}'],
            "--temperature must be >= 0",
        ),
    ],
)
def test_bad_input_is_one_typed_line_before_anything_is_scored(
    tiny_zoo, tmp_path, capsys, extra, message
):
    out = tmp_path / "cmp"
    assert main(_compare_args(tiny_zoo, out, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not out.exists()


def test_a_training_file_sharing_a_prompt_with_a_test_row_is_refused(tiny_zoo, tmp_path, capsys):
    from hub_merge.evaluate import load_tasks

    out = tmp_path / "cmp"
    files = []
    for task in load_tasks([str(tiny_zoo.tasks[t]) for t in TINY_COMPARE_TASKS]):
        path = tmp_path / "train" / f"{task.name}.jsonl"  # every row: the test rows too
        path.parent.mkdir(exist_ok=True)
        rows = [{"prompt": ex.prompt, "answer": ex.answer} for ex in task.examples]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        files.append(str(path))
    args = _compare_args(tiny_zoo, out, "--strategies", "greedy,dam", "--train-tasks", *files)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "test prompt(s)" in err and "\n" not in err
    assert not out.exists()


def test_push_row_publishes_that_rows_model_with_the_leaderboard(
    tiny_compare, local_hub, tmp_path, monkeypatch, capsys
):
    from hub_merge.hub import get_api

    folder = tiny_compare.folder
    monkeypatch.setenv("HF_TOKEN", local_hub.token)  # never a token in argv
    repo = f"{local_hub.user}/tiny-compare-dam"
    push = ["push", str(folder), "--license", "apache-2.0", "--endpoint", local_hub.endpoint]
    assert main([*push, "--row", "nope", "--repo", repo]) == 2
    assert "No row 'nope' in the leaderboard" in capsys.readouterr().err
    assert main([*push, "--row", "dam", "--repo", repo]) == 0
    api = get_api(local_hub.endpoint, local_hub.token)
    assert "model.safetensors" in set(api.list_repo_files(repo))
    card = Path(api.hf_hub_download(repo, "README.md", local_dir=tmp_path / "dl")).read_text()
    assert "## Leaderboard" in card and "the row named with --row (dam)" in card
    assert "never on the test rows" in card and "| oracle (oracle router) |" in card
    dam = next(r for r in tiny_compare.board.rows if r.name == "dam").seeds[0]
    record = json.loads(
        Path(api.hf_hub_download(repo, "hub_merge.json", local_dir=tmp_path / "dl")).read_text()
    )
    assert dam.node in json.dumps(record)
    # without --row: the recommended row, chosen on dev
    recommended = tiny_compare.board.recommended()
    repo2 = f"{local_hub.user}/tiny-compare-best"
    assert main([*push, "--repo", repo2]) == 0
    card2 = Path(api.hf_hub_download(repo2, "README.md", local_dir=tmp_path / "dl2")).read_text()
    assert f"the row **{recommended.label}**" in card2 and "the recommended row" in card2
    # the MoE row publishes the MoE's own folder (a Mixtral checkpoint, its own card)
    repo3 = f"{local_hub.user}/tiny-compare-moe"
    assert main([*push, "--row", "moe", "--repo", repo3]) == 0
    config = api.hf_hub_download(repo3, "config.json", local_dir=tmp_path / "dl3")
    assert json.loads(Path(config).read_text())["model_type"] == "mixtral"
    card3 = Path(api.hf_hub_download(repo3, "README.md", local_dir=tmp_path / "dl3")).read_text()
    assert "## Leaderboard" in card3 and "the row named with --row (moe)" in card3
    assert main([*push, "--row", "oracle", "--repo", repo3]) == 2  # no model of its own


def test_a_compare_folder_is_never_restarted_over(tiny_compare):
    with pytest.raises(SearchStateError, match="already holds a compare; pass --resume"):
        compare_strategies(CompareConfig(**tiny_compare.inputs))
    changed = {**tiny_compare.inputs, "limit": 3, "resume": True}
    with pytest.raises(SearchStateError, match="differs in: limit"):
        compare_strategies(CompareConfig(**changed))


def test_budgets_are_shared_evenly_or_given_per_strategy_and_seeds_make_runs():
    from hub_merge.leaderboard import parse_budget
    from hub_merge.search.strategy import strategy_names

    def config(**kw):
        return CompareConfig(base="b", experts=["x", "y"], tasks=["t.jsonl"], out="o", **kw)

    four = ["greedy", "evolve", "swarm", "dam"]
    assert config(strategies=four, budget=parse_budget("60")).budgets() == dict.fromkeys(four, 15)
    per = config(strategies=["dam", "evolve"], budget=parse_budget("dam=30,evolve=60"))
    assert per.budgets() == {"dam": 30, "evolve": 60}
    assert config(strategies=["greedy", "evolve"], budget={"evolve": 40}).budgets() == {
        "greedy": None,
        "evolve": 40,
    }
    assert config().strategy_list() == strategy_names()  # default: every registered strategy
    runs = config(strategies=["greedy", "dam"], seeds=2, seed=5, train_tasks=["t.jsonl"]).check()
    assert [(r.row, r.seed, r.folder, r.train) for r in runs] == [
        ("greedy", 5, "greedy-seed5", False),
        ("greedy", 6, "greedy-seed6", False),
        ("dam", 5, "dam-seed5", False),
        ("dam", 6, "dam-seed6", False),
        ("dam+train", 5, "dam-train-seed5", True),
        ("dam+train", 6, "dam-train-seed6", True),
    ]


def test_a_row_over_seeds_shows_mean_and_spread_and_publishes_its_best_seed_on_dev(tmp_path):
    from hub_merge.leaderboard import BoardRow, Leaderboard, SeedResult
    from hub_merge.leaderboard.rows import row_model

    seeds = [
        SeedResult(seed=s, dev={"a": d}, test={"a": t}, dev_fitness=-d, test_fitness=-t,
                   run=f"evolve-seed{s}", node=f"g{s}-1", model=f"evolve-seed{s}/winner")
        for s, d, t in [(0, 2.0, 1.0), (1, 1.0, 3.0)]
    ]  # fmt: skip
    board = Leaderboard(
        "answer_loss", "mean", {}, ["a"], [BoardRow("evolve", "strategy", "evolve", seeds)]
    )
    line = board.table()[1]
    assert line[1] == "2 ± 1.414 (2 seeds)"  # test mean of 1 and 3, their standard deviation
    assert line[2 + 1 + 1] == "1.5"  # dev mean
    board.write(tmp_path)
    (tmp_path / "compare.json").write_text("{}")
    chosen = row_model(tmp_path, "evolve")
    assert (chosen.run.name, chosen.node) == ("evolve-seed1", "g1-1")  # the seed best on dev
    assert "(seed 1, the best of 2 on dev)" in chosen.section


def test_each_row_starts_with_nothing_of_the_previous_row_held(tiny_zoo, tmp_path, monkeypatch):
    """One backend serves every row, but a finished row's state dicts, scoring model and DAM
    module are freed before the next row runs, and after the compare: the compare's memory is
    its largest row's, not one model per strategy."""
    import gc

    import hub_merge.search.api as api
    from hub_merge.dam import DamModel

    seen = []
    real = api.run_checked

    def spy(cfg, checked, models, session, backend, evaluators, **kw):
        seen.append(
            (cfg.strategy, backend.cached_bytes, len(backend._lru), backend._inplace is None)
        )
        result = real(cfg, checked, models, session, backend, evaluators, **kw)
        seen.append((cfg.strategy, backend.cached_bytes, len(backend._lru), None))
        spy.backend = backend
        return result

    monkeypatch.setattr(api, "run_checked", spy)
    inputs = tiny_compare_inputs(
        tiny_zoo,
        tmp_path / "cmp",
        strategies=["greedy", "dam"],
        settings={k: SMALL_SETTINGS[k] for k in ("greedy", "dam")},
    )
    board = compare_strategies(CompareConfig(**inputs))
    assert [r.name for r in board.rows if r.kind == "strategy"] == ["greedy", "dam"]
    greedy_start, greedy_end, dam_start, _ = seen
    assert greedy_end[1] > 0 and greedy_end[2] > 0  # greedy filled the cache...
    assert dam_start == ("dam", 0, 0, True)  # ...and DAM started without any of it
    backend = spy.backend
    assert (backend.cached_bytes, len(backend._lru), backend._inplace) == (0, 0, None)
    gc.collect()
    assert not [o for o in gc.get_objects() if type(o) is DamModel], "DAM's module is held"
