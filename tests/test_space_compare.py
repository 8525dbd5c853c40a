"""The Space's Compare tab through gradio_client: the leaderboard of ``compare_strategies`` on the
visitor's models and tasks, a push per row (``publish_row``), the Space's caps and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError
from huggingface_hub import HfApi

TASKS = ["reverse", "sort"]
SETTINGS = json.dumps({"greedy": {"generations": 1}, "dam": {"steps": 2, "max_rows": 4}})


def _experts(space_app) -> str:
    return "\n".join(space_app.repo_ids[f"expert/{t}"] for t in TASKS)


def _compare(client, space_app, *, strategies=("greedy", "dam"), budget=0, settings=SETTINGS,
             base=None, limit=4, token=""):  # fmt: skip
    return client.predict(
        base if base is not None else space_app.base,
        [],
        _experts(space_app),
        TASKS,
        8,
        None,
        list(strategies),
        budget,
        settings,
        limit,
        token,
        api_name="/compare",
    )


def _push_row(client, row, repo="cmp-merged", token=""):
    return client.predict(row, repo, "", False, token, api_name="/push_row")


def _server_paths(space_app) -> list[str]:
    return [str(Path.cwd()), str(space_app.sessions), str(Path(space_app.app.__file__).parent)]


def _sessions(space_app) -> set[Path]:
    return set(space_app.sessions.iterdir()) if space_app.sessions.exists() else set()


def test_compare_tab_shows_the_leaderboard_and_pushes_a_row(space_app, tmp_path):
    client = Client(space_app.url, verbose=False)
    with pytest.raises(AppError, match="Run a compare first"):
        _push_row(client, "dam", token=space_app.token)

    status, table, plot, notes = _compare(client, space_app)
    assert status.startswith("**Done**"), status
    assert "Recommended (best on the dev rows)" in status
    table = table.get("value", table)  # the table comes as a component update (new headers)
    head, rows = table["headers"], {r[0].split(" ")[0]: r for r in table["data"]}
    expert_names = [space_app.repo_ids[f"expert/{t}"].split("/")[-1] for t in TASKS]
    # both strategies beside every baseline, all scored on the same test rows
    assert list(rows) == ["greedy", "dam", *expert_names, "uniform", "oracle"]
    assert head[0] == "row" and "test EM" in head and any(h.startswith("dev ") for h in head)
    test_col = head.index(next(h for h in head if h.startswith("test ") and h != "test EM"))
    assert all(row[test_col] not in ("", "–") for row in rows.values())
    # the table is the compare's own leaderboard, written in this session's folder
    saved = list(space_app.sessions.glob("*/compare-*/leaderboard.json"))
    board = next(json.loads(p.read_text()) for p in saved if "dam" in p.read_text())
    assert [r["name"] for r in board["rows"]] == list(rows)
    recommended = board["recommended"]
    assert f"{recommended} [recommended (best on dev)" in " ".join(r[0] for r in table["data"])
    assert plot.endswith(".png") and open(plot, "rb").read(4) == b"\x89PNG"
    assert "never on the test rows" in notes

    # a push without a token says how to get one; a row with no model is refused by name
    with pytest.raises(AppError, match="sign in|token"):
        _push_row(client, "dam")
    with pytest.raises(AppError, match="has no model to publish"):
        _push_row(client, expert_names[0], token=space_app.token)
    with pytest.raises(AppError, match="No row 'nope'") as err:
        _push_row(client, "nope", token=space_app.token)
    for path in _server_paths(space_app):
        assert path not in str(err.value)

    # push the DAM row (a bare name gets the user's namespace); its card carries the leaderboard
    message, url = _push_row(client, "dam", token=space_app.token)
    repo = f"{space_app.user}/cmp-merged"
    assert url.endswith(f"/{repo}") and "row **dam**" in message
    api = HfApi(endpoint=space_app.endpoint, token=space_app.token)
    readme = api.hf_hub_download(repo, "README.md", local_dir=tmp_path)
    text = Path(readme).read_text(encoding="utf-8")
    assert "## Leaderboard" in text and "This model is the row **dam**" in text
    assert "never on the test rows" in text


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"budget": 10**9}, "budget of 1000000000 evaluations is over this Space's limit"),
        ({"settings": '{"dam": {"steps": 1000000}}'}, "'steps' = 1000000 is over this Space's"),
        ({"settings": '{"evolve": {"population": 4}}'}, "evolve, which is not among the strat"),
        ({"settings": "[1, 2]"}, 'Compare settings take {"strategy"'),
        ({"strategies": ()}, "Pick at least one strategy"),
        ({"limit": 100000}, "over this Space's limit of 256 rows"),
        ({"base": "/etc"}, "not a Hub model id"),
    ],
)
def test_compare_input_is_checked_at_the_edge_before_anything_runs(space_app, kwargs, message):
    """Each bad input is one line naming the cap or the field, no server path, and the fresh
    tab's session folder is gone (nothing was pulled or scored)."""
    client = Client(space_app.url, verbose=False)  # a fresh tab: its first call fails
    before = _sessions(space_app)
    with pytest.raises(AppError) as err:
        _compare(client, space_app, **kwargs)
    text = str(err.value)
    assert message in text and "\n" not in text.strip(), text
    for path in _server_paths(space_app):
        assert path not in text
    assert _sessions(space_app) == before


def test_an_unknown_strategy_is_refused(space_app):
    client = Client(space_app.url, verbose=False)
    with pytest.raises(AppError, match="annealing"):
        _compare(client, space_app, strategies=("greedy", "annealing"))


def test_the_space_caps_the_strategies_of_one_compare():
    from tests.fixtures.space import load_space_app

    load_space_app()  # puts spaces/ on sys.path
    from space_limits import SpaceLimits

    from hub_merge.errors import ConfigError

    limits = SpaceLimits(max_strategies=2, max_budget=50)
    assert limits.check_compare(["greedy", "dam"], {}, 0, 2) == 50
    with pytest.raises(ConfigError, match="3 strategies is over this Space's limit of 2"):
        limits.check_compare(["greedy", "dam", "evolve"], {}, 0, 2)
    with pytest.raises(ConfigError, match="'generations' = 60 is over"):
        limits.check_compare(["greedy"], {"greedy": {"generations": 60}}, 10, 2)
    assert SpaceLimits.from_env({"HUB_MERGE_SPACE_MAX_STRATEGIES": "3"}).max_strategies == 3
