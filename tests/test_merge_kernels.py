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
from hub_merge.merge.methods import TensorMerge, get_method, tensor_seed
from hub_merge.merge.random_drop import DARE_RNG, DARE_RNG_KEY, draw_key, drop_mask

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


def _philox_bernoulli(tensor, density, rescale_norm=None):
    """mergekit's ``bernoulli`` with the Philox mask instead of torch's draws (the reference)."""
    if density >= 1:
        return tensor
    drop = drop_mask(draw_key(), 0, tensor.numel(), density)
    keep = torch.from_numpy(~drop).reshape(tensor.shape).to(tensor.dtype)
    return mk_sparsify.rescaled_masked_tensor(tensor, keep, rescale_norm)


@pytest.fixture
def philox_mergekit(monkeypatch):
    """mergekit's own arithmetic, its DARE draws replaced by the Philox rule."""
    monkeypatch.setattr(mk_sparsify, "bernoulli", _philox_bernoulli)


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
def test_float32_equals_mergekit(method, shape, philox_mergekit):
    """Bit for bit mergekit's tensors (for DARE: with the Philox mask, see the next tests)."""
    for n in (2, 3):
        tensors = _inputs(shape, n, seed=n)
        ours = _merge(method, tensors, _params(method, n), fast=True)
        theirs = _merge(method, tensors, _params(method, n), fast=False)
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
        assert torch.equal(ours, theirs), f"{method} {shape} n={n}"


@pytest.mark.parametrize("method", ["ties", "breadcrumbs_ties", "dare_ties"])
def test_float32_equals_mergekit_with_options(method, philox_mergekit):
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("n", [1, 3])
def test_fast_linear_gives_mergekits_linear(dtype, normalize, n):
    """The linear kernel without mergekit's zero-filled accumulator: mergekit's values."""
    _, *experts = _inputs((64, 48), n, dtype=dtype, seed=n)
    ids = [f"m{i}" for i in range(n)]
    params = {
        "weight": {i: w for i, w in zip(ids, [0.7, -0.2, 0.45][:n], strict=True)},
        "normalize": normalize,
    }
    mk = merge_methods.get("linear")
    assert fast_method(mk) is not mk
    ours, theirs = (
        merge_methods.merge_tensors(
            experts, m, parameters=params, ids=ids, dtype=torch.float32, out_dtype=dtype
        )
        for m in (fast_method(mk), mk)
    )
    assert ours.dtype == theirs.dtype == dtype
    assert torch.equal(ours, theirs)


def test_ties_broken_by_element_index():
    w = torch.tensor([1.0, 3.0, 2.0, 2.0, 2.0, 5.0, 2.0])
    # top 4: 5, 3, then two of the four 2s: the lowest indices (2 and 3)
    assert rank_mask(w, 0, 4).nonzero().squeeze(1).tolist() == [1, 2, 3, 5]
    # descending ranks 2..4 (drop the top two, keep three): the 2s at indices 2, 3, 4
    assert rank_mask(w, 2, 5).nonzero().squeeze(1).tolist() == [2, 3, 4]
    # magnitude keeps exactly int(density * numel) with the same rule
    x = torch.tensor([-2.0, 2.0, 1.0, -2.0, 2.0, 0.5])
    assert magnitude(x, 0.5).tolist() == [-2.0, 2.0, 0.0, -2.0, 0.0, 0.0]


@pytest.mark.parametrize("density", [0.3, 0.5, 0.9])
def test_ties_trimming_keeps_the_top_k_by_magnitude_then_index_on_heavy_ties(density):
    """TIES's trimming on a tensor large enough for the sampled bracket (420k elements) and
    tied many times at the threshold (bf16 values): a stable descending sort's first k."""
    gen = torch.Generator().manual_seed(5)
    delta = (torch.randn(600 * 700, generator=gen) * 1e-3).to(torch.bfloat16).float()
    k = max(1, int(density * delta.numel()))
    w = delta.abs()
    top = torch.argsort(-w, stable=True)[:k]
    assert int((w >= w[top[-1]]).sum()) > k  # surplus ties at the threshold to drop by index
    expected = torch.zeros_like(delta)
    expected[top] = delta[top]
    # one expert over a zero base, weight 1: the merge is the trimmed task vector itself
    ours = _merge(
        "ties",
        [torch.zeros_like(delta), delta],
        {"weight": {"m0": 1.0}, "density": {"m0": density}},
        fast=True,
    )
    assert torch.equal(ours, expected)


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
    # DARE's generator is recorded where Philox drew the masks, and only there
    assert DARE_RNG_KEY not in _header_metadata(fast / "model.safetensors")
    dare = recipe.model_copy(update={"method": "dare_ties", "seed": 3})
    out = merge_to_folder(dare, tmp_path / "dare", device="cpu", progress=False)
    assert _header_metadata(out / "model.safetensors")[DARE_RNG_KEY] == DARE_RNG
    exact_dare = dare.model_copy(update={"exact_mergekit": True})
    out = merge_to_folder(exact_dare, tmp_path / "dare-exact", device="cpu", progress=False)
    assert DARE_RNG_KEY not in _header_metadata(out / "model.safetensors")


def test_card_says_which_arithmetic_ran():
    from tests.test_card import make_tree

    tree = make_tree()
    fast = str(build_card(tree, arithmetic=ARITHMETIC_FAST))
    assert "keeps the lower element indices" in fast and "--exact-mergekit" in fast
    assert "counter-based Philox" in fast
    exact = str(build_card(tree, arithmetic=ARITHMETIC_MERGEKIT))
    assert "mergekit's own arithmetic" in exact and "lower element indices" not in exact
    assert "Philox" not in exact
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


# --- DARE's Philox mask -------------------------------------------------------------------------


def _dare_mask(density: float, shape=(1000, 1000), *, fast: bool, n: int = 1, seed: int = 7):
    """The kept elements of a dare_linear merge of all-ones experts over a zero base."""
    zeros = torch.zeros(shape)
    params = {
        "weight": {f"m{i}": 1.0 for i in range(n)},
        "density": {f"m{i}": density for i in range(n)},
        "rescale": False,
        "normalize": False,
    }
    if n == 1:
        return _merge("dare_linear", [zeros, torch.ones(shape)], params, fast=fast, seed=seed) != 0
    # n experts with distinct powers of two: each one's mask is one bit of the sum
    experts = [torch.full(shape, float(2**i)) for i in range(n)]
    out = _merge("dare_linear", [zeros, *experts], params, fast=fast, seed=seed).to(torch.int64)
    return [(out >> i) & 1 == 1 for i in range(n)]


def _lag_correlation(mask: torch.Tensor, lag: int) -> float:
    x = mask.reshape(-1).double()
    return float(torch.corrcoef(torch.stack((x[:-lag], x[lag:])))[0, 1])


@pytest.mark.parametrize("density", [0.1, 0.5, 0.9])
def test_dare_mask_is_bernoulli_like_mergekits(density):
    """Same keep rate, no correlation between neighbours, binomial counts per row: as mergekit."""
    for fast in (True, False):
        mask = _dare_mask(density, fast=fast)
        n = mask.numel()
        sigma = (density * (1 - density) / n) ** 0.5
        assert abs(mask.float().mean().item() - density) < 5 * sigma, (fast, density)
        for lag in (1, 2, 7, 8, 9, 1000):  # 8: one Philox block; 1000: the next row
            assert abs(_lag_correlation(mask, lag)) < 5 / n**0.5, (fast, lag)
        per_row = mask.sum(dim=1).double()
        # 1000 rows of Binomial(1000, p): the sample variance is within 20% of n p (1 - p)
        assert 0.8 < per_row.var().item() / (1000 * density * (1 - density)) < 1.2, fast
    ours, theirs = _dare_mask(density, fast=True), _dare_mask(density, fast=False)
    assert not torch.equal(ours, theirs)  # other draws than torch's generator


def test_dare_masks_of_two_experts_are_independent():
    first, second = _dare_mask(0.3, (600, 500), fast=True, n=2)
    n = first.numel()
    both = (first & second).float().mean().item()
    assert abs(both - 0.09) < 5 * (0.09 * 0.91 / n) ** 0.5
    assert abs(first.float().mean().item() - 0.3) < 5 * (0.21 / n) ** 0.5


def test_dare_mask_does_not_depend_on_chunking(monkeypatch):
    from hub_merge.merge import kernels, random_drop

    tensors = _inputs((300, 1000), 3, seed=11)
    params = {**_params("dare_ties", 3), "rescale": True}
    whole = _merge("dare_ties", tensors, params, fast=True)
    monkeypatch.setattr(random_drop, "_CHUNK", 8 * 4099)  # 10 pieces, on the thread pool
    monkeypatch.setattr(kernels, "_CHUNK_ELEMENTS", 1 << 14)
    assert torch.equal(_merge("dare_ties", tensors, params, fast=True), whole)
    # a piece of the mask drawn alone is that piece of the whole mask
    key = 12345
    full = drop_mask(key, 0, 100_003, 0.4)
    for start, stop in ((0, 8), (8 * 77, 8 * 77 + 5), (8 * 12000, 100_003)):
        assert (drop_mask(key, start, stop, 0.4) == full[start:stop]).all()
    with pytest.raises(ValueError, match="multiple of 8"):
        drop_mask(key, 3, 10, 0.4)


def test_dare_mask_follows_seed_and_tensor_name():
    tensors = _inputs((64, 48), 2, seed=2)
    params = {"weight": 0.5, "density": 0.5}

    def run(seed, name):
        op = TensorMerge(get_method("dare_ties"), params, [{}, {}], seed=seed)
        return op(name, tensors[1:], tensors[0])

    a = run(3, "model.layers.0.mlp.up_proj.weight")
    assert torch.equal(a, run(3, "model.layers.0.mlp.up_proj.weight"))  # deterministic
    assert not torch.equal(a, run(3, "model.layers.1.mlp.up_proj.weight"))  # another name
    assert not torch.equal(a, run(4, "model.layers.0.mlp.up_proj.weight"))  # another seed
    assert tensor_seed(3, "a") != tensor_seed(3, "b")


def test_exact_mergekit_gives_mergekits_dare_draws():
    tensors = _inputs((64, 48), 2)
    params = {"weight": 0.5, "density": 0.4}
    op = TensorMerge(get_method("dare_ties"), params, [{}, {}], exact_mergekit=True)
    torch.manual_seed(7)
    ours = op("w", tensors[1:], tensors[0])
    expected = _merge(
        "dare_ties",
        tensors,
        {"weight": {"m0": 0.5, "m1": 0.5}, "density": {"m0": 0.4, "m1": 0.4}},
        fast=False,
    )
    assert torch.equal(ours, expected)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_dare_mask_is_the_same_on_cuda():
    tensors = _inputs((300, 1000), 2, seed=4)
    params = {"weight": 0.5, "density": 0.3}

    def run(device):
        op = TensorMerge(get_method("dare_ties"), params, [{}, {}], seed=1)
        on = [t.to(device) for t in tensors]
        return op("model.layers.0.mlp.up_proj.weight", on[1:], on[0]).cpu()

    cpu, gpu = run("cpu"), run("cuda")
    assert torch.equal(cpu == tensors[0], gpu == tensors[0])  # the same elements dropped
    torch.testing.assert_close(gpu, cpu, rtol=1e-5, atol=1e-7)


def test_dare_pool_works_in_a_forked_child(monkeypatch):
    """A worker forked after a DARE merge draws its masks too (its own pool, not the parent's)."""
    import multiprocessing

    from hub_merge.merge import random_drop

    monkeypatch.setattr(random_drop, "_CHUNK", 8 * 1024)
    delta = torch.ones(8 * 1024 * 4)
    random_drop.random_drop_(delta.clone(), 0.5, False, key=1)  # the parent's pool exists now
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        kept = pool.apply_async(_drop_in_child, (delta,)).get(timeout=60)
    expected = delta.clone()
    random_drop.random_drop_(expected, 0.5, False, key=1)
    assert kept == int(expected.count_nonzero())


def _drop_in_child(delta: torch.Tensor) -> int:
    from hub_merge.merge import random_drop

    random_drop.random_drop_(delta, 0.5, False, key=1)
    return int(delta.count_nonzero())
