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
    # --json prints only JSON: no library bars ("Fetching N files", per-file downloads)
    assert "Fetching" not in captured.err and "it/s" not in captured.err, captured.err[-2000:]
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
    assert models[0] == f"winner {first['winner']}"
    # every baseline (each expert, the uniform average, the oracle router) beside the winner
    assert models[-1] == "oracle router"
    assert len(models) == len(first["experts"]) + 3 - (first["winner"] in ("uniform", *names))
    assert (out / "kinship.png").stat().st_size > 0 and (out / "run" / "fitness.png").is_file()
    _check_published(out, first)

    again = _demo(capsys, "--quick", "--out", str(out))
    assert again["resumed"] and again["winner"] == first["winner"]
    assert first["evaluations"] > 0 and again["evaluations"] == 0
    assert again["comparison"] == first["comparison"]  # nothing re-evaluated differently
    assert again["push"]["commit_sha"] == first["push"]["commit_sha"]  # no new commit

    # a plain run shows one display per step: no "Fetching N files" or per-file download bars
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    plain = capsys.readouterr()
    assert "Fetching" not in plain.err and "B/s" not in plain.err, plain.err[-2000:]
    assert "4. Pull" in plain.out and "Published" in plain.out
    assert "peak RSS" in plain.out and 0 < first["peak_rss_mb"] < 64 * 1024

    # --quiet prints only the result: the comparison table and where the merge went, no steps
    assert main(["--quiet", "demo", "--quick", "--out", str(out)]) == 0
    quiet = capsys.readouterr()
    assert quiet.err == ""
    lines = quiet.out.strip().splitlines()
    assert "Published" in lines[-1] and first["push"]["repo_id"] in lines[-1]
    assert not any(line.lstrip().startswith(("1.", "4.", "6.")) for line in lines)
    assert len(lines) <= len(first["experts"]) + 10  # the table (baselines, winner) and one line


@pytest.mark.slow
def test_full_demo_on_smollm2_merges_better_than_every_expert(tmp_path, capsys):
    out = tmp_path / "demo"
    data = _demo(capsys, "--out", str(out))
    assert data["zoo"].startswith("smol")
    rows = {row["model"]: row["combined"] for row in data["comparison"]}
    winner = next(v for k, v in rows.items() if k.startswith("winner "))
    roles = {row["model"]: row["role"] for row in data["comparison"]}
    experts = [v for k, v in rows.items() if roles[k] in ("expert", "uniform")]
    assert winner < min(experts), rows  # answer-token loss: lower is better
    _check_published(out, data)


@pytest.mark.slow
def test_quick_demo_with_evolve(tmp_path, capsys):
    data = _demo(
        capsys, "--quick", "--strategy", "evolve", "--budget", "15", "--out", str(tmp_path)
    )
    assert data["strategy"] == "evolve" and 0 < data["evaluations"] <= 15
    assert [row["model"] for row in data["comparison"]][0] == f"winner {data['winner']}"
    _check_published(tmp_path, data)
    assert main(["demo", "--quick", "--strategy", "annealing", "--out", str(tmp_path)]) == 2
    assert "Unknown search strategy" in capsys.readouterr().err
