"""``hub-merge demo``: the README's main command, end to end on the embedded local Hub."""

from __future__ import annotations

import json

import pytest
from huggingface_hub import HfApi, ModelCard

from hub_merge.cli import main
from hub_merge.localhub import LocalHub


def _demo(capsys, *args: str) -> dict:
    code = main(["demo", *args, "--json", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    return json.loads(captured.out)


def _check_published(out, data: dict) -> None:
    """The pushed repo is on the demo's Hub (restarted from its data) with a merge card."""
    push = data["push"]
    with LocalHub(out / "hub") as server:
        api = HfApi(endpoint=server.endpoint)
        assert api.model_info(push["repo_id"]).sha == push["commit_sha"]
        files = set(api.list_repo_files(push["repo_id"]))
        assert {"model.safetensors", "README.md", "hub_merge.json", "kinship.png"} <= files
    card = ModelCard.load(out / "run" / "winner" / "README.md")
    assert card.data.base_model_relation == "merge"
    assert card.data.hub_merge["node"] == data["winner"]


@pytest.mark.slow
def test_quick_demo_runs_end_to_end_and_a_second_run_reuses_everything(tmp_path, capsys):
    out = tmp_path / "demo"
    first = _demo(capsys, "--quick", "--out", str(out))

    assert len(first["experts"]) >= 2 and not first["resumed"]
    assert set(first["generated"]) == set(first["experts"])  # the pulled-back merge answered
    assert first["listed_as_merge"]  # the Hub's model tree shows the push as a merge
    names = first["kinship"]["names"]
    assert sorted(names) == sorted(first["experts"])
    matrix = first["kinship"]["matrix"]
    assert all(abs(matrix[i][i] - 1) < 1e-6 for i in range(len(names)))
    models = [row["model"] for row in first["comparison"]]
    assert models[-1].startswith("winner ") and len(models) == len(first["experts"]) + 1
    assert (out / "kinship.png").stat().st_size > 0 and (out / "run" / "fitness.png").is_file()
    _check_published(out, first)

    again = _demo(capsys, "--quick", "--out", str(out))
    assert again["resumed"] and again["winner"] == first["winner"]
    assert first["evaluations"] > 0 and again["evaluations"] == 0
    assert again["comparison"] == first["comparison"]  # nothing re-evaluated differently
    assert again["push"]["commit_sha"] == first["push"]["commit_sha"]  # no new commit


@pytest.mark.slow
def test_full_demo_on_smollm2_merges_better_than_every_expert(tmp_path, capsys):
    out = tmp_path / "demo"
    data = _demo(capsys, "--out", str(out))
    assert data["zoo"].startswith("smol")
    rows = {row["model"]: row["mean"] for row in data["comparison"]}
    winner = next(v for k, v in rows.items() if k.startswith("winner "))
    experts = [v for k, v in rows.items() if not k.startswith("winner ")]
    assert winner < min(experts), rows  # answer-token loss: lower is better
    _check_published(out, data)
