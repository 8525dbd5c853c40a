"""The fast sparsification kernels give mergekit's tensors, and break threshold ties by index."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from mergekit import merge_methods
from mergekit import sparsify as mk_sparsify

from hub_merge.card import build_card, merge_arithmetic
from hub_merge.merge import MergeRecipe, ModelEntry, merge_to_folder
from hub_merge.merge.kernels import (
    ARITHMETIC_FAST,
    ARITHMETIC_KEY,
    ARITHMETIC_MERGEKIT,
    fast_method,
    magnitude,
    magnitude_outliers,
    rank_mask,
)
from hub_merge.merge.methods import TensorMerge, get_method

FAST_METHODS = [
    "ties",
    "dare_ties",
    "dare_linear",
    "breadcrumbs",
    "breadcrumbs_ties",
    "della",
    "della_linear",
    "task_arithmetic",
]


def _inputs(shape, n, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=gen) * 0.02
    experts = [base + 0.002 * torch.randn(shape, generator=gen) for _ in range(n)]
    return [t.to(dtype) for t in (base, *experts)]


def _merge(method, tensors, params, *, fast: bool, seed: int = 7):
    ids = ["base"] + [f"m{i}" for i in range(len(tensors) - 1)]
    m = merge_methods.get(method)
    torch.manual_seed(seed)
    return merge_methods.merge_tensors(
        tensors,
        fast_method(m) if fast else m,
        parameters=params,
        ids=ids,
        base_index=0,
        dtype=torch.float32,
    )


def _params(method, n):
    per = lambda vals: {f"m{i}": vals[i] for i in range(n)}  # noqa: E731
    params = {"weight": per([1.0, 0.6, 0.5, 0.3][:n]), "density": per([0.5, 0.3, 0.7, 0.45][:n])}
    if method.startswith("breadcrumbs"):
        params["gamma"] = per([0.05, 0.01, 0.1, 0.02][:n])
    if method.startswith("della"):
        params["epsilon"] = per([0.1, 0.05, 0.2, 0.15][:n])
    return params


# 300x1000 is above the size where the threshold is bracketed by a sample (4 * 65536 elements).
@pytest.mark.parametrize("shape", [(300, 1000), (64, 48), (333,)])
@pytest.mark.parametrize("method", FAST_METHODS)
def test_float32_equals_mergekit(method, shape):
    for n in (2, 3):
        tensors = _inputs(shape, n, seed=n)
        ours = _merge(method, tensors, _params(method, n), fast=True)
        theirs = _merge(method, tensors, _params(method, n), fast=False)
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
        assert torch.equal(ours, theirs), f"{method} {shape} n={n}"


@pytest.mark.parametrize("method", ["ties", "breadcrumbs_ties", "dare_ties"])
def test_float32_equals_mergekit_with_options(method):
    tensors = _inputs((300, 1000), 2, seed=5)
    for extra in (
        {"rescale": True},
        {"normalize": False, "lambda": 0.7},
        {"density": {"m0": 1.0, "m1": 0.0}},
    ):
        params = {**_params(method, 2), **extra}
        assert torch.equal(
            _merge(method, tensors, params, fast=True), _merge(method, tensors, params, fast=False)
        ), f"{method} {extra}"


def _kept(fn, x, **kw) -> torch.Tensor:
    return fn(x, **kw) != 0


@pytest.mark.parametrize(
    ("ours", "theirs", "kw"),
    [
        (magnitude, mk_sparsify.magnitude, {"density": 0.3}),
        (magnitude, mk_sparsify.magnitude, {"density": 0.5}),
        (magnitude_outliers, mk_sparsify.magnitude_outliers, {"density": 0.6, "gamma": 0.05}),
    ],
)
def test_bf16_same_kept_except_ties_and_same_count(ours, theirs, kw):
    gen = torch.Generator().manual_seed(3)
    # A bf16 task vector: 256 magnitudes per octave, so the threshold value is tied many times.
    delta = (torch.randn((512, 700), generator=gen) * 1e-3).to(torch.bfloat16).float()
    assert delta.count_nonzero() == delta.numel()  # every zero of a result is a drop
    ours_kept, theirs_kept = _kept(ours, delta, **kw), _kept(theirs, delta, **kw)
    assert int(ours_kept.sum()) == int(theirs_kept.sum())
    differ = ours_kept != theirs_kept
    w = delta.abs()
    # Every difference is among elements tied at a threshold magnitude (both tools keep some).
    thresholds = set(w[ours_kept].min().reshape(1).tolist()) | set(
        w[theirs_kept].min().reshape(1).tolist()
    )
    if "gamma" in kw:
        thresholds |= {w[ours_kept].max().item(), w[theirs_kept].max().item()}
    on_threshold = torch.zeros_like(differ)
    for v in thresholds:
        on_threshold |= w == v
    assert (differ & ~on_threshold).sum() == 0
    assert differ.any()  # the test does exercise ties (bf16 deltas tie at the threshold)


def test_ties_broken_by_element_index():
    w = torch.tensor([1.0, 3.0, 2.0, 2.0, 2.0, 5.0, 2.0])
    # top 4: 5, 3, then two of the four 2s: the lowest indices (2 and 3)
    assert rank_mask(w, 0, 4).nonzero().squeeze(1).tolist() == [1, 2, 3, 5]
    # descending ranks 2..4 (drop the top two, keep three): the 2s at indices 2, 3, 4
    assert rank_mask(w, 2, 5).nonzero().squeeze(1).tolist() == [2, 3, 4]
    # magnitude keeps exactly int(density * numel) with the same rule
    x = torch.tensor([-2.0, 2.0, 1.0, -2.0, 2.0, 0.5])
    assert magnitude(x, 0.5).tolist() == [-2.0, 2.0, 0.0, -2.0, 0.0, 0.0]


def test_rank_mask_is_a_stable_descending_sort():
    gen = torch.Generator().manual_seed(1)
    for n, levels in ((1000, 7), (300_000, 50), (300_000, 10**6)):
        w = torch.randint(0, levels, (n,), generator=gen).float()
        order = torch.sort(w, descending=True, stable=True).indices
        for start, stop in ((0, n // 3), (n // 10, n // 2), (5, 6), (0, n), (n - 1, n)):
            expected = torch.zeros(n, dtype=torch.bool)
            expected[order[start:stop]] = True
            assert torch.equal(rank_mask(w, start, stop), expected), (n, levels, start, stop)


def test_exact_mergekit_option_runs_mergekit():
    tensors = _inputs((64, 48), 2)
    # A tied threshold: the fast kernel and mergekit's sort may keep different tied elements.
    tensors = [t.to(torch.bfloat16).float() for t in tensors]
    params = {"weight": 0.5, "density": 0.5}
    op = TensorMerge(get_method("ties"), params, [{}, {}], exact_mergekit=True)
    expected = _merge(
        "ties", tensors, {"weight": {"m0": 0.5, "m1": 0.5}, "density": 0.5}, fast=False
    )
    assert torch.equal(op("w", tensors[1:], tensors[0]), expected)


def _header_metadata(path) -> dict:
    raw = path.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + size])["__metadata__"]


def test_output_records_whose_arithmetic_ran(tiny_models, tmp_path):
    z = tiny_models
    recipe = MergeRecipe(
        method="ties",
        base=str(z.base),
        models=[
            ModelEntry(model=str(e), parameters={"weight": 0.5, "density": 0.5})
            for e in z.experts[:2]
        ],
    )
    fast = merge_to_folder(recipe, tmp_path / "fast", device="cpu", progress=False)
    exact_recipe = recipe.model_copy(update={"exact_mergekit": True})
    exact = merge_to_folder(exact_recipe, tmp_path / "exact", device="cpu", progress=False)
    assert _header_metadata(fast / "model.safetensors")[ARITHMETIC_KEY] == ARITHMETIC_FAST
    assert _header_metadata(exact / "model.safetensors")[ARITHMETIC_KEY] == ARITHMETIC_MERGEKIT
    # The option is part of the recipe only when set, so older recipes keep their hash.
    assert "exact_mergekit" not in recipe.to_dict()
    assert exact_recipe.to_dict()["exact_mergekit"] is True
    assert recipe.recipe_hash() != exact_recipe.recipe_hash()
    linear = MergeRecipe(
        method="linear", models=[str(e) for e in z.experts[:2]], parameters={"weight": 0.5}
    )
    out = merge_to_folder(linear, tmp_path / "linear", device="cpu", progress=False)
    assert _header_metadata(out / "model.safetensors")[ARITHMETIC_KEY] == ARITHMETIC_MERGEKIT
    assert merge_arithmetic(fast) == ARITHMETIC_FAST
    assert merge_arithmetic(exact) == ARITHMETIC_MERGEKIT


def test_card_says_which_arithmetic_ran():
    from tests.test_card import make_tree

    tree = make_tree()
    fast = str(build_card(tree, arithmetic=ARITHMETIC_FAST))
    assert "keeps the lower element indices" in fast and "--exact-mergekit" in fast
    exact = str(build_card(tree, arithmetic=ARITHMETIC_MERGEKIT))
    assert "mergekit's own arithmetic" in exact and "lower element indices" not in exact
    assert "lower element indices" not in str(build_card(tree))


def test_read_ahead_failure_leaves_nothing_and_reads_stay_bounded(
    tiny_models, tmp_path, monkeypatch
):
    """A read that fails in the read-ahead thread surfaces in the merge; nothing is left behind."""
    from hub_merge.merge import inputs, run

    z = tiny_models
    recipe = MergeRecipe(
        method="ties",
        base=str(z.base),
        models=[
            ModelEntry(model=str(e), parameters={"weight": 0.5, "density": 0.5})
            for e in z.experts[:2]
        ],
    )
    real_get = inputs.CheckpointSource.get
    reads: list[str] = []
    merged: list[str] = []

    def failing_get(self, name, **kw):
        reads.append(name)
        if len(reads) == 3 * 6:  # the 6th tensor of 3 inputs
            raise OSError("input disk went away")
        return real_get(self, name, **kw)

    monkeypatch.setattr(inputs.CheckpointSource, "get", failing_get)
    with pytest.raises(run.MergeError, match="input disk went away"):
        merge_to_folder(recipe, tmp_path / "out", progress=False, on_tensor=merged.append)
    assert list(tmp_path.iterdir()) == []
    # It read ahead of the merge, but not further than its bound (3 tensors).
    assert len(merged) < 6 and len(set(reads)) - len(merged) <= 4
