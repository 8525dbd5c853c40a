"""The Space's caps, sessions and cancellation, without a browser or a model (fast).

Cancellation is tested without timing: the search's backend blocks on an event the test sets,
so the cancel always arrives while a candidate is being scored, at a point the test chooses.
The Gradio-level checks (through gradio_client) are in test_space.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from hub_merge.errors import ConfigError, TaskFileError
from hub_merge.search import GreedySettings, run_strategy
from hub_merge.search.state import RunFolder
from tests.fixtures.space import SPACES
from tests.test_search_greedy import VECTORS, VectorBackend, originals

sys.path.insert(0, str(SPACES))
import workflow  # noqa: E402 - spaces/ is not a package
from space_limits import SpaceLimits  # noqa: E402

SETTINGS = GreedySettings(k=3, generations=3, kinship_stop=None, patience=10)


class Gate(VectorBackend):
    """Blocks in the ``block_at``-th evaluation until the test releases it."""

    def __init__(self, block_at: int | None = None) -> None:
        super().__init__(VECTORS)
        self.block_at = block_at
        self.started, self.release = threading.Event(), threading.Event()

    def evaluate(self, recipe):
        if len(self.evaluated) == self.block_at:
            self.started.set()
            assert self.release.wait(60), "the test never released the gate"
        return super().evaluate(recipe)


def _runner(backend: VectorBackend, folder: Path, resume: bool = False):
    def run(config):
        return run_strategy(
            originals(),
            backend,
            "greedy",
            SETTINGS,
            run=RunFolder(folder, {"test": 1}, resume=resume),
            progress=False,
            cancel=config.cancel,
        )

    return run


@pytest.fixture
def cpu_load():
    """Two busy processes beside the test, as a loaded CI machine has."""
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        yield
    finally:
        for p in busy:
            p.kill()
            p.wait()


@pytest.mark.slow  # a stress loop: 20 cancels under CPU load (CI runs it)
def test_a_cancel_before_the_last_candidate_always_interrupts(tmp_path, cpu_load):
    full = Gate()
    expected = _runner(full, tmp_path / "full")(SimpleNamespace(cancel=None))
    n = len(full.evaluated)
    assert n > 6  # baselines and several generations: many points to cancel at
    for i in range(20):
        block_at = i * (n - 1) // 19  # from the first expert to the last candidate
        folder = tmp_path / f"run-{i}"
        gate = Gate(block_at)
        run = workflow.SearchRun(SimpleNamespace(cancel=None), runner=_runner(gate, folder))
        run.start()
        assert gate.started.wait(60)
        run.cancel()
        gate.release.set()
        assert run.wait(60)
        state = json.loads((folder / "state.json").read_text())
        assert (run.cancelled, run.result, state["status"]) == (True, None, "interrupted"), i
        # ...and resumable: the resumed run ends where an uncancelled one ends.
        resumed = _runner(VectorBackend(VECTORS), folder, resume=True)(SimpleNamespace(cancel=None))
        assert resumed.winner == expected.winner
        assert json.loads((folder / "state.json").read_text())["status"] == "done"


def test_the_wall_time_cap_cancels_a_search(tmp_path):
    gate = Gate(block_at=2)
    run = workflow.SearchRun(
        SimpleNamespace(cancel=None), max_seconds=0.2, runner=_runner(gate, tmp_path / "r")
    )
    run.start()
    # The gate holds the run until the watchdog has fired, wherever the run then is: in the
    # gated candidate, or (on a loaded machine, where 0.2 s passes before it gets there) before it.
    assert run.stop.wait(60)
    gate.release.set()
    assert run.wait(60) and run.cancelled and "limit" in run.reason
    assert json.loads((tmp_path / "r" / "state.json").read_text())["status"] == "interrupted"


def test_a_page_that_stops_polling_cancels_its_search(tmp_path):
    gate = Gate(block_at=1)
    run = workflow.SearchRun(
        SimpleNamespace(cancel=None), idle_seconds=0.2, runner=_runner(gate, tmp_path / "r")
    )
    run.start()
    assert run.stop.wait(60)  # the gate holds the run: only the watchdog can set this
    gate.release.set()
    assert run.wait(60) and run.cancelled and "stopped following" in run.reason


def test_sessions_are_registered_capped_and_reaped(tmp_path):
    parent = tmp_path / "sessions"
    first = workflow.Session.create(parent, max_open=len(workflow.SESSIONS) + 2)
    second = workflow.Session.create(parent, max_open=len(workflow.SESSIONS) + 1)
    with pytest.raises(ConfigError, match="sessions open"):
        workflow.Session.create(parent, max_open=len(workflow.SESSIONS))
    assert sorted(parent.iterdir()) == sorted([first.root, second.root])
    first.last_used -= 100
    workflow.SESSIONS.reap(ttl=50)  # an idle session's folder goes, whoever held it
    assert not first.root.exists() and second.root.exists()
    second.close()
    assert list(parent.iterdir()) == []


def test_limits_come_from_the_environment_with_safe_defaults():
    limits = SpaceLimits.from_env({"HUB_MERGE_SPACE_MAX_PROMPT_CHARS": "10"})
    assert limits.max_prompt_chars == 10 and limits.max_budget == SpaceLimits().max_budget
    with pytest.raises(ConfigError, match="HUB_MERGE_SPACE_MAX_BUDGET"):
        SpaceLimits.from_env({"HUB_MERGE_SPACE_MAX_BUDGET": "lots"})


@pytest.mark.parametrize(
    ("settings", "budget", "message"),
    [
        ({"generations": 10**8, "population": 10**5}, 0, "'generations' = 100000000 is over"),
        ({"population": 10**5}, 0, "'population' = 100000 is over"),
        ({"generations": 1e8}, 0, "whole number"),
        ({"k": 3}, 10**9, "budget of 1000000000 evaluations is over"),
        ({"steps": 10**6}, 10, "'steps' = 1000000 is over"),
    ],
)
def test_search_settings_over_the_caps_are_refused(settings, budget, message):
    with pytest.raises(ConfigError, match=message):
        SpaceLimits().check_search(settings, budget, 2)
    # No budget means the Space's own cap, never an unbounded search.
    assert SpaceLimits().check_search({"k": 3}, 0, 2) == SpaceLimits().max_budget


def _session(tmp_path) -> workflow.Session:
    return workflow.Session(root=tmp_path / "session")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (json.dumps({"prompt": "x" * 5000, "answer": "a"}), "line 1: the prompt is 5000 characters"),
        (json.dumps({"prompt": "p", "answer": "y" * 2000}), "the answer is 2000 characters"),
        ("\n".join(json.dumps({"prompt": f"p{i}", "answer": "a"}) for i in range(300)), "more than 256 rows"),
        ('{"prompt": "p", "answer": "a"}\n{not json', "line 2: not valid JSON"),
        ('{"prompt": "p", "answer": "a"}\n' + "[" * 100_000, "line 2: not valid JSON"),
        ('{"prompt": "p"}', "'answer' is missing"),
        ("x" * (3 * 1024 * 1024), "bytes; this Space takes task files of at most"),
    ],
)  # fmt: skip
def test_task_files_are_capped_and_errors_name_only_the_upload(tmp_path, content, message):
    upload_dir = tmp_path / "gradio-upload-xyz"
    upload_dir.mkdir()
    bad = upload_dir / "bad.jsonl"
    bad.write_text(content)
    session = _session(tmp_path)
    with pytest.raises(TaskFileError) as err:
        workflow.task_files(session, [], 8, [str(bad)], SpaceLimits())
    text = str(err.value)
    assert message in text and "bad.jsonl" in text
    assert str(tmp_path) not in text and "/" not in text.replace("{", "")


def test_builtin_rows_over_the_cap_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="over this Space's limit of 256 rows"):
        workflow.task_files(_session(tmp_path), ["reverse"], 100_000, [], SpaceLimits())


def test_tokens_are_checked_after_characters():
    class Tokenizer:
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": text.split()}

    limits = SpaceLimits(max_prompt_tokens=3, max_answer_tokens=1)
    limits.check_tokens(Tokenizer(), [("t", [("a b c", "x")])])
    with pytest.raises(TaskFileError, match="Task 't', row 2: the prompt is 4 tokens"):
        limits.check_tokens(Tokenizer(), [("t", [("a", "x"), ("a b c d", "x")])])
    with pytest.raises(TaskFileError, match="the answer is 2 tokens"):
        limits.check_tokens(Tokenizer(), [("t", [("a", "x y")])])
