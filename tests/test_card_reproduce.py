"""A card's recipe reproduces the published model: its mergekit YAML, run by ``mergekit-yaml``.

The search runs on a bfloat16 copy of the tiny zoo, where ``dtype: float32`` alone (mergekit's
default output dtype is its compute dtype) gives float32 tensors that are not the published
bfloat16 ones: each step's YAML must name ``out_dtype``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from hub_merge.card import write_card
from hub_merge.search import SearchConfig, greedy_search

pytestmark = pytest.mark.slow  # one tiny search and one mergekit-yaml process (~10 s import)


def _bf16_copy(folder: Path, out: Path) -> Path:
    """The model folder with its weights stored as bfloat16 (config says so too)."""
    out.mkdir(parents=True)
    for item in folder.iterdir():
        if item.suffix == ".safetensors":
            tensors = load_file(item)
            save_file(
                {
                    k: v.to(torch.bfloat16) if v.is_floating_point() else v
                    for k, v in tensors.items()
                },
                out / item.name,
                metadata={"format": "pt"},
            )
        elif item.is_file():
            shutil.copy2(item, out / item.name)
    config = json.loads((out / "config.json").read_text())
    config["torch_dtype"] = config["dtype"] = "bfloat16"
    (out / "config.json").write_text(json.dumps(config))
    return out


@pytest.fixture(scope="module")
def bf16_run(tiny_zoo, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bf16")
    base = _bf16_copy(tiny_zoo.base, root / "base")
    experts = [_bf16_copy(tiny_zoo.experts[n], root / n) for n in ("add", "sort")]
    run = root / "run"
    greedy_search(
        SearchConfig(
            base=str(base),
            experts=[str(e) for e in experts],
            tasks=[str(tiny_zoo.tasks["add"]), str(tiny_zoo.tasks["sort"])],
            out=str(run),
            settings={"k": 2, "generations": 1, "kinship_stop": None},
            limit=4,
            device="cpu",
            progress=False,
            kinship_metric="euclidean",
            materialize=["g1-1"],
        )
    )
    return run


def test_published_step_yaml_gives_the_published_tensors_through_mergekit(bf16_run, tmp_path):
    written = write_card(bf16_run, node_id="g1-1", repo_id="me/bf16-merge")
    record = json.loads(written.hub_merge_json.read_text())
    steps = {s["node"]: s for s in record["recipe"]["steps"]}
    text = steps["g1-1"]["mergekit_yaml"]
    config = yaml.safe_load(text)
    assert config["dtype"] == "float32" and config["out_dtype"] == "bfloat16"
    assert text in written.readme.read_text()  # the card shows the same YAML

    (tmp_path / "step.yaml").write_text(text)
    exe = Path(sys.executable).with_name("mergekit-yaml")
    done = subprocess.run(
        [str(exe), str(tmp_path / "step.yaml"), str(tmp_path / "mergekit"), "--quiet"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    theirs = load_file(tmp_path / "mergekit" / "model.safetensors")
    published = load_file(bf16_run / "nodes" / "g1-1" / "model.safetensors")
    assert set(theirs) == set(published)
    for name, tensor in published.items():
        assert theirs[name].dtype == tensor.dtype == torch.bfloat16, name
        torch.testing.assert_close(theirs[name], tensor, rtol=0, atol=0, msg=name)


def test_euclidean_kinship_table_has_zero_on_its_diagonal(bf16_run):
    written = write_card(bf16_run, node_id="g1-1", repo_id="me/bf16-merge")
    kinship = json.loads(written.hub_merge_json.read_text())["kinship"]
    assert kinship["metric"] == "euclidean"
    matrix = kinship["matrix"]
    assert [matrix[i][i] for i in range(len(matrix))] == [0.0] * len(matrix)
    assert matrix[0][1] > 0  # the off-diagonal distance is a real one
    text = written.readme.read_text()
    assert "Euclidean distance" in text and "near 1, they learned" not in text
    lines = text.splitlines()
    header = lines.index("| | `add` | `sort` |")  # the kinship table of the card body
    rows = [line.strip("|").split("|") for line in lines[header + 2 : header + 4]]
    assert [row[1 + i].strip() for i, row in enumerate(rows)] == ["0", "0"]
