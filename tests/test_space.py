"""The Gradio Space driven through its API with gradio_client, against a local Hub with the tiny zoo.

One flow as a user would do it: discover the base's family, measure kinship, run a short search,
push the winner, then read the pushed repo back from the Hub.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError
from huggingface_hub import HfApi

pytestmark = pytest.mark.slow

TASKS = ["reverse", "sort"]


@pytest.fixture(scope="module")
def client(space_app):
    return Client(space_app.url, verbose=False)


def _experts(space_app) -> list[str]:
    return [space_app.repo_ids[f"expert/{t}"] for t in TASKS]


def test_discover_kinship_search_push_and_read_back(space_app, client, tmp_path):
    # 1. discovery through the model tree, anonymously (public repos)
    table, chosen, note = client.predict(
        space_app.base, ["finetune", "adapter"], 20, "", api_name="/discover"
    )
    found = {row[0]: row[1] for row in table["data"]}
    for task in ("add", "reverse", "sort", "uppercase"):
        assert found[space_app.repo_ids[f"expert/{task}"]] == "finetune"
        assert found[space_app.repo_ids[f"adapter/{task}"]] == "adapter"
    # the candidates list is refilled with every model found, all ticked
    assert {c[0] for c in chosen["choices"]} == set(found) == set(chosen["value"])
    assert "Found 8 model(s)" in note

    # 2. kinship of two experts: a heatmap file and a symmetric table with 1 on the diagonal
    experts = _experts(space_app)
    heatmap, kin = client.predict(space_app.base, experts, "", "", api_name="/kinship")
    assert heatmap.endswith(".png")
    with open(heatmap, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    kin = kin.get("value", kin)  # the table comes as a component update (new headers)
    assert kin["headers"] == ["model", *experts]
    rows = {r[0]: r[1:] for r in kin["data"]}
    assert list(rows) == experts
    assert rows[experts[0]][0] == pytest.approx(1.0)
    assert rows[experts[0]][1] == pytest.approx(rows[experts[1]][0])
    assert -1.0 <= rows[experts[0]][1] < 1.0

    # 3. a short search on two built-in tasks, one pasted id added to the picked one
    status, gens, fitness, tree, card, baselines = client.predict(
        space_app.base,
        experts[:1],
        experts[1],
        TASKS,
        8,
        None,
        2,
        1,
        "linear",
        4,
        "merged",
        "",
        "",
        api_name="/search",
    )
    assert status.startswith("**Done**"), status
    assert [g[0] for g in gens["data"]] == [0, 1]
    assert fitness.endswith(".png") and tree.endswith(".png")
    assert "merged" in card and "linear" in card.lower()
    # the winner against every baseline, with held-out test scores
    table = {row[0]: row for row in baselines["data"]}
    assert {"uniform", *(e.split("/")[-1] for e in experts)} <= {
        name.removesuffix(" (winner)") for name in table
    }
    assert all(row[2] is not None and row[3] for row in table.values())

    # 4. pushing without a token says how to get one, and pushes nothing
    with pytest.raises(AppError, match="sign in|token"):
        client.predict("merged", "", False, "", api_name="/push")

    # 5. push as the demo user (a bare name gets the user's namespace), then read it back
    message, url = client.predict("merged", "", False, space_app.token, api_name="/push")
    repo = f"{space_app.user}/merged"
    assert url.endswith(f"/{repo}") and repo in message
    api = HfApi(endpoint=space_app.endpoint, token=space_app.token)
    files = set(api.list_repo_files(repo))
    assert {"README.md", "hub_merge.json", "config.json"} <= files
    assert any(f.endswith(".safetensors") for f in files)
    readme = api.hf_hub_download(repo, "README.md", local_dir=tmp_path)
    text = open(readme, encoding="utf-8").read()
    for expert in experts:
        assert expert in text  # lineage names both parents
    meta = json.loads(open(api.hf_hub_download(repo, "hub_merge.json", local_dir=tmp_path)).read())
    assert meta  # the machine-readable lineage came along


def test_evolve_through_the_space_with_its_own_settings_and_a_budget(space_app):
    client = Client(space_app.url, verbose=False)  # a tab of its own
    experts = _experts(space_app)
    pasted = "\n".join(experts[:2])  # a fresh tab has no discovered candidates to tick
    common = [space_app.base, [], pasted, TASKS, 8, None, 2, 1, "slerp", 4, "", "", ""]
    status, gens, _, _, card, baselines = client.predict(
        *common, "evolve", '{"method": "linear"}', 9, api_name="/search"
    )
    assert status.startswith("**Done** (evolve: budget of 9 evaluations spent)"), status
    assert [g[0] for g in gens["data"]] == [0, 1]  # baselines, then one CMA-ES generation of 6
    assert len(baselines["data"]) >= 3 and "Evolutionary merging" in card
    # a setting another strategy owns is refused in one line, before anything is searched
    with pytest.raises(AppError, match="'k' is not a setting of strategy 'evolve'"):
        client.predict(*common, "evolve", '{"k": 3}', None, api_name="/search")


def test_errors_reach_the_user_as_messages(space_app, client):
    with pytest.raises(AppError, match="at least two"):
        client.predict(space_app.base, [], "", "", api_name="/kinship")
    with pytest.raises(AppError, match="base model"):
        client.predict("", ["finetune"], 5, "", api_name="/discover")
    # a typed hub-merge error (no such repo) arrives as its own message
    with pytest.raises(AppError, match="nobody/nothing|not found|does not exist"):
        client.predict("nobody/nothing", [], "a/b\nc/d", "", api_name="/kinship")
    with pytest.raises(AppError, match="Run a search first"):
        Client(space_app.url, verbose=False).predict("x", "", False, "t", api_name="/push")


def test_sessions_are_isolated(space_app):
    """A second visitor sees neither the first one's run nor can push it."""
    first, second = Client(space_app.url, verbose=False), Client(space_app.url, verbose=False)
    first.predict(space_app.base, ["finetune"], 5, "", api_name="/discover")
    with pytest.raises(AppError, match="Run a search first"):
        second.predict("stolen", "", False, space_app.token, api_name="/push")


def test_token_helpers_never_fall_back_to_the_server_token(space_app, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_server_owner_secret_token")
    assert space_app.app.user_token("", None) is False
    assert space_app.app.user_token("  hf_typed  ", None) == "hf_typed"
    import gradio as gr

    signed_in = gr.OAuthToken(token="hf_oauth_user", scope="write-repos", expires_at=0)
    assert space_app.app.user_token("", signed_in) == "hf_oauth_user"


@pytest.fixture
def gated_scoring(monkeypatch):
    """The Space's next search blocks when it scores its first candidate, until released: a
    cancel then always lands while a candidate is being scored, whatever the machine's load."""
    import threading

    from hub_merge.search.core import SearchCore

    started, release = threading.Event(), threading.Event()
    original = SearchCore._score

    def gated(self, node):
        if not started.is_set():
            started.set()
            assert release.wait(120), "the test never released the search"
        return original(self, node)

    monkeypatch.setattr(SearchCore, "_score", gated)
    yield started, release
    release.set()


def _session_states(space_app) -> dict[Path, str]:
    return {
        p: json.loads(p.read_text()).get("status")
        for p in space_app.sessions.glob("*/run-*/state.json")
    }


def test_cancel_stops_a_running_search(space_app, gated_scoring):
    """Cancel ends the search (its state saved as interrupted, resumable), so there is no
    finished winner to push. Deterministic: the search is held inside its first scoring until
    the cancel has been sent."""
    started, release = gated_scoring
    client = Client(space_app.url, verbose=False)
    experts = [space_app.repo_ids[f"expert/{t}"] for t in ("add", "reverse", "sort", "uppercase")]
    before = _session_states(space_app)
    job = client.submit(
        space_app.base, [], "\n".join(experts), ["reverse", "sort", "add", "uppercase"], 64,
        None, 3, 5, "slerp", 64, "", "", "", api_name="/search",
    )  # fmt: skip
    assert started.wait(180), "the search never started scoring"
    assert client.predict(api_name="/cancel").startswith("Cancelling")
    release.set()
    with contextlib.suppress(Exception):  # Gradio may end the cancelled job with its own error
        job.result(timeout=120)
    # the search saved its state as interrupted (resumable), as Ctrl-C does...
    assert _wait_for(lambda: "interrupted" in _new_states(space_app, before))
    # ...and stopped before a winner was written: nothing finished to publish
    with pytest.raises(AppError) as err:
        client.predict("cancelled", "", False, space_app.token, api_name="/push")
    message = str(err.value)
    assert re.search(r"Run a search first|original experts|not written as a model", message)


def _new_states(space_app, before: dict[Path, str]) -> set[str]:
    return {s for p, s in _session_states(space_app).items() if p not in before}


def _wait_for(condition, seconds: float = 5.0) -> bool:
    """Poll ``condition`` for up to ``seconds`` (the issue's bound for a freed worker)."""
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return bool(condition())


def test_a_huge_search_is_capped_and_a_cancel_frees_the_worker(space_app):
    client = Client(space_app.url, verbose=False)
    pasted = "\n".join(_experts(space_app))
    common = [space_app.base, [], pasted, TASKS, 8, None, 2, 1, "slerp", 4, "", "", ""]
    # Over the caps: refused in one line before anything runs.
    huge = '{"generations": 100000000, "population": 100000}'
    with pytest.raises(AppError, match="over this Space's limit") as err:
        client.predict(*common, "evolve", huge, 0, api_name="/search")
    assert "\n" not in str(err.value).strip()
    with pytest.raises(AppError, match="budget of 1000000000 evaluations is over"):
        client.predict(*common, "evolve", "{}", 10**9, api_name="/search")
    # At the caps, it runs until cancelled; the worker is free within 5 s of the cancel.
    before = _session_states(space_app)
    job = client.submit(
        *common, "evolve", '{"population": 32, "generations": 50}', 200, api_name="/search"
    )
    # The tab has its first "Running" update, and the search has started scoring.
    assert _wait_for(lambda: job.outputs() and set(_session_states(space_app)) - set(before), 300)
    assert client.predict(api_name="/cancel").startswith("Cancelling")
    with contextlib.suppress(Exception):
        job.result(timeout=60)
    other = Client(space_app.url, verbose=False)  # another visitor, queued behind the search
    quick = other.submit(
        "", [], "", TASKS, 8, None, 2, 1, "slerp", 4, "", "", "", api_name="/search"
    )
    with pytest.raises(AppError, match="base model"):
        quick.result(timeout=5)
    assert _wait_for(
        lambda: (
            "interrupted" in {s for p, s in _session_states(space_app).items() if p not in before}
        )
    )


def _upload(tmp_path: Path, name: str, lines: list[str]):
    from gradio_client import handle_file

    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return handle_file(str(path))


def _sessions(space_app) -> set[Path]:
    return set(space_app.sessions.iterdir()) if space_app.sessions.exists() else set()


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([json.dumps({"prompt": "x" * 400_000, "answer": "a"})], "the prompt is 400000 characters"),
        (['{"prompt": "p", "answer": "a"}', '{"prompt": broken'], "bad.jsonl, line 2: not valid JSON"),
    ],
)  # fmt: skip
def test_bad_task_files_are_refused_by_name_without_server_paths(
    space_app, tmp_path, lines, message
):
    """An oversized prompt or a malformed line is refused before any model is pulled; the
    error names the uploaded file, never a server folder, and the new session's folder goes."""
    client = Client(space_app.url, verbose=False)  # a fresh tab: its first call fails
    before = _sessions(space_app)
    pasted = "\n".join(_experts(space_app))
    upload = _upload(tmp_path, "bad.jsonl", lines)
    with pytest.raises(AppError) as err:
        client.predict(
            space_app.base, [], pasted, [], 8, [upload], 2, 1, "linear", 4, "", "", "",
            api_name="/search",
        )  # fmt: skip
    text = str(err.value)
    assert message in text and "bad.jsonl" in text, text
    for path in [*_server_paths(space_app), str(tmp_path), "/tmp"]:
        assert path not in text
    assert _sessions(space_app) == before


def test_a_prompt_over_the_token_cap_is_refused_before_the_search(space_app, tmp_path):
    """Under the character cap, over the token cap (300 tokens in this Space): the base's own
    tokenizer counts it, before any candidate is scored; the error names the task."""
    client = Client(space_app.url, verbose=False)
    before = _session_states(space_app)
    prompt = " ".join(f"w{i}" for i in range(700))  # ~3300 characters, far more tokens than 300
    upload = _upload(tmp_path, "wordy.jsonl", [json.dumps({"prompt": prompt, "answer": "a"})])
    pasted = "\n".join(_experts(space_app))
    with pytest.raises(AppError, match=r"Task 'wordy', row 1: the prompt is \d+ tokens"):
        client.predict(
            space_app.base, [], pasted, [], 8, [upload], 2, 1, "linear", 4, "", "", "",
            api_name="/search",
        )  # fmt: skip
    assert _new_states(space_app, before) == set()  # nothing was scored or saved


def test_a_failing_first_call_leaves_no_session_folder(space_app):
    """Kinship pulls the base and the first candidate, then fails on a missing second one: the
    session's folder, with the pulled models, is deleted (it never reached the tab's state)."""
    client = Client(space_app.url, verbose=False)
    before = _sessions(space_app)
    good = _experts(space_app)[0]
    with pytest.raises(AppError, match="not found|does not exist"):
        client.predict(space_app.base, [], f"{good}\nnobody/missing-model", "", api_name="/kinship")
    assert _sessions(space_app) == before


def test_space_front_matter_matches_the_app():
    """The Space's README declares the installed Gradio, OAuth with the least scopes its
    features use (never manage-repos), and the project's license; requirements pin the released
    package at this version, so the Hub builds the Space the tests ran."""
    from pathlib import Path

    import gradio
    from huggingface_hub import SpaceCard

    from tests.fixtures.space import SPACES

    data = SpaceCard.load(SPACES / "README.md").data.to_dict()
    assert data["sdk"] == "gradio" and data["sdk_version"] == gradio.__version__
    assert (SPACES / data["app_file"]).is_file()
    assert data["hf_oauth"] is True
    assert set(data["hf_oauth_scopes"]) == {"read-repos", "write-repos", "contribute-repos"}
    assert data["license"] == "lgpl-3.0"
    assert len(data["short_description"]) <= 60  # the Hub's limit
    import hub_merge

    lines = [
        line.strip()
        for line in Path(SPACES / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines == [f"hub-merge[space]=={hub_merge.__version__}"]


HOSTILE_IDS = [
    "/",
    "/etc",
    "/proc/self",
    "../",
    "..",
    "./",
    "~",
    "~/.cache",
    "org/..",
    "org/x@../../etc",
    "org/x@",
    "a/b/c",
    "org\x00/x",
    "ö/x",
    "x" * 300 + "/y",
]


def _server_paths(space_app) -> list[str]:
    from huggingface_hub import constants

    return [
        str(Path.cwd()),
        str(space_app.sessions),
        str(Path(constants.HF_HUB_CACHE)),
        str(Path(space_app.app.__file__).parent),
    ]


@pytest.mark.parametrize("hostile", HOSTILE_IDS)
def test_hostile_ids_are_refused_in_one_line_without_server_paths(space_app, client, hostile):
    runs_before = sorted(space_app.sessions.glob("*/run-*"))
    pasted = "\n".join(_experts(space_app))
    first = _experts(space_app)[0]
    calls = [
        ("base", lambda: client.predict(hostile, ["finetune"], 5, "", api_name="/discover")),
        ("base", lambda: client.predict(hostile, [], pasted, "", api_name="/kinship")),
        ("expert", lambda: client.predict(space_app.base, [], f"{first}\n{hostile}", "", api_name="/kinship")),
        (
            "base",
            lambda: client.predict(
                hostile, [], pasted, TASKS, 8, None, 2, 1, "linear", 4, "", "", "", api_name="/search"
            ),
        ),
    ]  # fmt: skip
    for field, call in calls:
        with pytest.raises(AppError) as err:
            call()
        message = str(err.value)
        assert "not a Hub model id" in message, message
        assert ("base model" if field == "base" else "candidate model #2") in message
        assert "\n" not in message.strip()
        for path in _server_paths(space_app):
            assert path not in message
    assert sorted(space_app.sessions.glob("*/run-*")) == runs_before  # nothing was searched


def test_server_folders_are_never_models_even_with_a_valid_looking_id(space_app, client, tiny_zoo):
    """A real model folder on the server (the zoo's), by absolute path, is refused; an id that
    names a folder relative to the server's working directory is looked up on the Hub only."""
    good = _experts(space_app)[0]
    on_disk = str(tiny_zoo.experts["add"])
    with pytest.raises(AppError, match="not a Hub model id") as err:
        client.predict(space_app.base, [], f"{good}\n{on_disk}", "", api_name="/kinship")
    assert on_disk not in str(err.value)
    relative = "tests/fixtures"  # a folder beside the server: it used to be read from disk
    assert Path(relative).is_dir()
    with pytest.raises(AppError) as err:
        client.predict(space_app.base, [], f"{good}\n{relative}", "", api_name="/kinship")
    message = str(err.value)
    assert "not found" in message, message
    for path in _server_paths(space_app):
        assert path not in message
