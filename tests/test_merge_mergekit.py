"""hub-merge's merges equal mergekit-yaml's for the same recipe, method by method.

mergekit is run as its CLI: the real ``mergekit-yaml`` executable for the greedy default recipe,
and its click command (the same entry point) for all other recipes in ONE subprocess, because
importing mergekit's planner costs ~10 s a process on the shared 2-core machine.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hub_merge.merge import MergeRecipe, ModelEntry, default_greedy_recipe, merge_to_folder
from tests.fixtures.merge import load_folder, run_mergekit_yaml

pytestmark = pytest.mark.slow


def _cases(z) -> dict[str, MergeRecipe]:
    e0, e1, e2 = (str(p) for p in z.experts)
    base = str(z.base)

    def m(path, **params):
        return ModelEntry(model=path, parameters=params)

    return {
        "linear": MergeRecipe(
            method="linear", models=[m(e0, weight=1.0), m(e1, weight=0.5), m(e2, weight=0.3)]
        ),
        "slerp": MergeRecipe(method="slerp", base=e0, models=[m(e1)], parameters={"t": [0.1, 0.9]}),
        "nuslerp": MergeRecipe(
            method="nuslerp", base=base, models=[m(e0, weight=0.3), m(e1, weight=0.7)]
        ),
        "task_arithmetic": MergeRecipe(
            method="task_arithmetic",
            base=base,
            models=[m(e0, weight=0.7), m(e1, weight=0.4), m(e2, weight=0.2)],
        ),
        "ties": MergeRecipe(
            method="ties",
            base=base,
            models=[
                m(e0, weight=1.0, density=0.5),
                m(e1, weight=0.6, density=0.3),
                m(e2, weight=0.5, density=0.7),
            ],
        ),
        # Random methods at density 1 (mergekit's global-seed order cannot be reproduced per tensor).
        "dare_linear": MergeRecipe(
            method="dare_linear",
            base=base,
            models=[m(e0, weight=0.6, density=1.0), m(e1, weight=0.4, density=1.0)],
        ),
        "dare_ties": MergeRecipe(
            method="dare_ties",
            base=base,
            models=[m(e0, weight=0.6, density=1.0), m(e1, weight=0.8, density=1.0)],
        ),
        "breadcrumbs": MergeRecipe(
            method="breadcrumbs",
            base=base,
            models=[
                m(e0, weight=0.5, density=0.8, gamma=0.05),
                m(e1, weight=0.5, density=0.9, gamma=0.02),
            ],
        ),
        "della": MergeRecipe(
            method="della",
            base=base,
            models=[m(e0, weight=0.5, density=1.0), m(e1, weight=0.5, density=1.0)],
        ),
        "model_stock": MergeRecipe(method="model_stock", base=base, models=[m(e0), m(e1), m(e2)]),
        # Per-tensor overrides: filters with gradients, per-model filtered weights.
        "ties_filtered": MergeRecipe(
            method="ties",
            base=base,
            models=[
                m(e0, weight=[{"filter": "mlp", "value": [0.2, 1.0]}, {"value": 0.5}], density=0.5),
                m(e1, weight=0.5, density=[{"filter": "self_attn", "value": 0.2}, {"value": 0.8}]),
            ],
            parameters={"lambda": 0.9},
        ),
        "greedy_default": default_greedy_recipe(e0, e1),
    }


@pytest.fixture(scope="module")
def mergekit_outputs(tiny_models, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mergekit")
    cases = _cases(tiny_models)
    jobs = []
    for name, recipe in cases.items():
        cfg = root / f"{name}.yaml"
        cfg.write_text(recipe.to_mergekit_yaml(input_dtype="float32"))
        jobs.append((str(cfg), str(root / name)))
    # The real executable once, for the default greedy recipe (filters + layer gradients).
    exe = Path(sys.executable).with_name("mergekit-yaml")
    cli_job = jobs.pop()
    subprocess.run([str(exe), *cli_job, "--quiet"], check=True, capture_output=True)
    run_mergekit_yaml(jobs)
    return {name: root / name for name in cases}


@pytest.mark.parametrize(
    "case",
    [
        "linear",
        "slerp",
        "nuslerp",
        "task_arithmetic",
        "ties",
        "dare_linear",
        "dare_ties",
        "breadcrumbs",
        "della",
        "model_stock",
        "ties_filtered",
        "greedy_default",
    ],
)
def test_equals_mergekit_yaml(case, tiny_models, mergekit_outputs, tmp_path):
    recipe = _cases(tiny_models)[case]
    ours = load_folder(merge_to_folder(recipe, tmp_path / "ours", device="cpu", progress=False))
    theirs = load_folder(mergekit_outputs[case])
    assert set(ours) == set(theirs)
    for name in theirs:
        torch.testing.assert_close(
            ours[name], theirs[name], msg=lambda m, n=name: f"{case} {n}: {m}"
        )
