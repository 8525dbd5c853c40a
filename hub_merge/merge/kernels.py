"""Fast sparsification for mergekit's task-arithmetic family (ties, dare, breadcrumbs, della).

Why this exists: mergekit's magnitude trimming sorts every whole task vector (``argsort``), which
makes a TIES merge on CPU ~10x slower than a linear one (``benchmarks/merge_speed.py`` measures it).
Keeping the k largest magnitudes only needs the k-th largest value, found here in linear time; the
rest of the arithmetic (delta, masks, sign consensus, normalisation, rescaling) is the same
sequence of torch operations as mergekit 0.1.5's ``GeneralizedTaskArithmeticMerge``, so the
results are mergekit's tensors (tested against ``merge_tensors`` in tests/test_merge_kernels.py),
DARE's draws excepted (below).

**Tie rule.** mergekit keeps exactly ``k = max(1, int(density * numel))`` elements, breaking ties
at the threshold magnitude in the order of its unstable sort, which cannot be reproduced without
running that sort. Here the same number of elements is kept and ties are broken by flat element
index: among equal magnitudes the lower index ranks as the larger one (as a stable descending
sort would order them). Without ties at the threshold the kept elements are mergekit's exactly.
DELLA ranks elements within each row by a stable sort, so its tie rule is the same.

**DARE's drops** (``random`` sparsification: dare_ties, dare_linear) come from a counter-based
Philox generator keyed by the recipe's seed, the tensor's name and the expert's position
(:mod:`.random_drop`), drawn in parallel pieces: the same keep probability per element as
mergekit's ``bernoulli``, but other draws (mergekit's need torch's sequential generator). The
output's metadata records it (``DARE_RNG_KEY``).

``exact_mergekit=True`` (recipe ``exact_mergekit: true``, CLI ``--exact-mergekit``) runs mergekit's
own arithmetic instead, for users who need bit identity including its tie order and DARE draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Annotated, Any

import torch
from mergekit import merge_methods as _mergekit_methods
from mergekit.merge_methods import merge_tensors
from mergekit.merge_methods.base import (
    BatchParameter,
    MergeMethod,
    ParameterScope,
    TensorBatch,
    TensorGroup,
)
from mergekit.merge_methods.easy_define import merge_method
from mergekit.merge_methods.generalized_task_arithmetic import (
    ConsensusMethod,
    GeneralizedTaskArithmeticMerge,
)
from mergekit.sparsify import (
    RescaleNorm,
    SparsificationMethod,
    bernoulli,
    rescaled_masked_tensor,
)

from .random_drop import DARE_RNG, DARE_RNG_KEY, random_drop_

_SAMPLE = 1 << 16  # sample size for bracketing a rank before the exact selection
# Elements per chunk of the merge loop, all experts' rows together (see merge_group).
_CHUNK_ELEMENTS = 1 << 20


def _value_at_desc_rank(w: torch.Tensor, r: int) -> torch.Tensor:
    """The value of descending rank ``r`` (0 = largest) of the flat float tensor ``w``, exactly."""
    return _value_and_count_at_desc_rank(w, r)[0]


def _value_and_count_at_desc_rank(
    w: torch.Tensor, r: int
) -> tuple[torch.Tensor, int | None, torch.Tensor | None]:
    """The value ``v`` of descending rank ``r`` of flat ``w``, how many elements are ``>= v``,
    and the flat indices (ascending) of the elements equal to ``v``.

    Linear time: a strided sample brackets the rank, the elements inside the bracket are gathered
    and ``kthvalue`` runs on those only (a few vectorised passes instead of a full sort); the
    count and the tied elements then come from the bracket alone (every element ``>= v`` is above
    it or in it), which saves two passes over ``w``. Falls back to ``kthvalue`` on everything,
    with the count and ties None (unknown), when the bracket misses (tiny tensors, heavy ties,
    NaNs).
    """
    n = w.numel()
    if n <= 4 * _SAMPLE:
        return torch.kthvalue(w, n - r).values, None, None
    stride = n // _SAMPLE
    sample = w[::stride]
    s = sample.numel()
    q = (r + 0.5) / n
    margin = 6.0 * math.sqrt(s * q * (1 - q)) + 32
    hi_rank = int(q * s - margin)  # descending ranks in the sample
    lo_rank = int(q * s + margin) + 1
    hi = (
        torch.kthvalue(sample, s - hi_rank).values
        if hi_rank >= 0
        else torch.tensor(float("inf"), dtype=w.dtype, device=w.device)
    )
    lo = (
        torch.kthvalue(sample, s - lo_rank).values
        if lo_rank < s
        else torch.tensor(float("-inf"), dtype=w.dtype, device=w.device)
    )
    above = int((w > hi).count_nonzero())
    if above <= r:
        where = ((w <= hi) & (w >= lo)).nonzero().squeeze(1)
        band = w[where]
        inner = r - above
        if inner < band.numel():
            v = torch.kthvalue(band, band.numel() - inner).values
            return v, above + int((band >= v).count_nonzero()), where[band == v]
    return torch.kthvalue(w, n - r).values, None, None


def rank_mask(w: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Bool mask of the elements of flat ``w`` whose descending rank is in ``[start, stop)``.

    Ranks order by value, ties by flat index (lower index = higher rank, as a stable descending
    sort). Exactly ``stop - start`` elements are selected.
    """
    n = w.numel()
    start, stop = max(0, start), min(n, stop)
    if start >= stop:
        return torch.zeros(n, dtype=torch.bool, device=w.device)
    lo = _value_at_desc_rank(w, stop - 1)
    if start == 0:
        mask = w >= lo
    else:
        hi = _value_at_desc_rank(w, start)
        mask = (w >= lo) & (w <= hi)
        if bool(hi != lo):
            above_hi = int((w > hi).count_nonzero())
            eq = (w == hi).nonzero().squeeze(1)
            mask[eq[: max(0, start - above_hi)]] = False  # ties at hi ranked before start
        else:
            above = int((w > hi).count_nonzero())
            eq = (w == hi).nonzero().squeeze(1)
            mask[eq[: start - above]] = False
            mask[eq[stop - above :]] = False
            return mask
    count = int(mask.count_nonzero())
    if count > stop - start:  # ties at lo beyond stop: drop the highest indices
        eq = (mask & (w == lo)).nonzero().squeeze(1)
        mask[eq[eq.numel() - (count - (stop - start)) :]] = False
    return mask


def magnitude_mask(tensor: torch.Tensor, density: float) -> torch.Tensor | None:
    """Bool mask of the ``k = max(1, int(density * numel))`` largest |x| (None: keep all)."""
    if density >= 1:
        return None
    if density <= 0 or tensor.numel() == 0:
        return torch.zeros(tensor.shape, dtype=torch.bool, device=tensor.device)
    k = max(1, int(density * tensor.numel()))
    w = tensor.abs().reshape(-1)
    if w.device.type == "cpu":
        w = w.float()
    return rank_mask(w, 0, k).reshape(tensor.shape)


def magnitude(
    tensor: torch.Tensor, density: float, rescale_norm: RescaleNorm | None = None
) -> torch.Tensor:
    """mergekit's ``sparsify.magnitude`` (keep the ``k`` largest |x|) with a linear-time threshold."""
    mask = magnitude_mask(tensor, density)
    if mask is None:
        return tensor
    return rescaled_masked_tensor(tensor, mask.to(tensor.dtype), rescale_norm)


def magnitude_outliers(
    tensor: torch.Tensor,
    density: float,
    rescale_norm: RescaleNorm | None = None,
    gamma: float = 0.01,
) -> torch.Tensor:
    """mergekit's breadcrumbs trimming: drop the ``gamma`` largest, then the smallest, by rank."""
    if density >= 1:
        return tensor
    n = tensor.numel()
    target_n = int(density * n)
    n_top = int(gamma * n)
    n_bot = max(0, n - target_n - n_top)
    w = tensor.abs().reshape(-1)
    if w.device.type == "cpu":
        w = w.float()
    # mergekit keeps ascending ranks [n_bot, n_bot + target_n): descending [n - n_bot - target_n, n - n_bot)
    mask = rank_mask(w, n - n_bot - target_n, n - n_bot).reshape_as(tensor)
    return rescaled_masked_tensor(tensor, mask.to(tensor.dtype), rescale_norm)


def della_magprune(
    tensor: torch.Tensor,
    density: float,
    epsilon: float,
    rescale_norm: RescaleNorm | None = None,
) -> torch.Tensor:
    """mergekit's DELLA pruning with ranks from one stable sort (mergekit sorts twice)."""
    if density >= 1:
        return tensor
    if density <= 0:
        return torch.zeros_like(tensor)
    orig_shape = tensor.shape
    if density + epsilon >= 1 or density - epsilon <= 0:
        raise ValueError("Epsilon must be chosen such that density +/- epsilon is in (0, 1)")
    work_dtype = (
        tensor.dtype
        if tensor.device.type != "cpu" or tensor.dtype == torch.bfloat16
        else torch.float32
    )
    if len(tensor.shape) < 2:
        tensor = tensor.unsqueeze(0)
    order = torch.sort(tensor.abs(), dim=1, stable=True).indices
    cols = tensor.shape[1]
    ranks = torch.empty(tensor.shape, dtype=work_dtype, device=tensor.device)
    steps = torch.arange(1, cols + 1, dtype=work_dtype, device=tensor.device)
    ranks.scatter_(1, order, steps.expand_as(ranks))
    min_ranks = ranks.min(dim=1, keepdim=True).values
    max_ranks = ranks.max(dim=1, keepdim=True).values
    rank_norm = ((ranks - min_ranks) / (max_ranks - min_ranks)).clamp(0, 1)
    probs = (density - epsilon) + rank_norm * 2 * epsilon
    mask = torch.bernoulli(probs).to(work_dtype)
    res = rescaled_masked_tensor(tensor.to(work_dtype), mask, rescale_norm)
    return res.to(tensor.dtype).reshape(orig_shape)


def sparsify(
    tensor: torch.Tensor,
    density: float,
    method: SparsificationMethod,
    gamma: float = 0,
    epsilon: float = 0,
    rescale_norm: RescaleNorm | None = None,
) -> torch.Tensor:
    """Drop-in for ``mergekit.sparsify.sparsify`` (random sparsification is mergekit's own)."""
    if method == SparsificationMethod.magnitude:
        return magnitude(tensor, density, rescale_norm)
    if method == SparsificationMethod.random:
        return bernoulli(tensor, density=density, rescale_norm=rescale_norm)
    if method == SparsificationMethod.magnitude_outliers:
        return magnitude_outliers(tensor, density, rescale_norm, gamma)
    if method == SparsificationMethod.della_magprune:
        return della_magprune(tensor, density, epsilon, rescale_norm)
    raise NotImplementedError(method)


@dataclass(frozen=True)
class FastTaskArithmetic(GeneralizedTaskArithmeticMerge):
    """A mergekit task-arithmetic method whose sparsification is :func:`sparsify` above.

    Same spec, parameters and parameter binding as the wrapped mergekit method (it is passed to
    mergekit's ``merge_tensors``); only ``merge_group`` differs, and only in calling this module's
    sparsification. The body follows mergekit 0.1.5 operation for operation so that every other
    rounding is the same; the weighted deltas and sign mask are computed in place.
    """

    @classmethod
    def wrap(cls, method: GeneralizedTaskArithmeticMerge) -> FastTaskArithmetic:
        return cls(**{f.name: getattr(method, f.name) for f in fields(method)})

    def merge_group(self, group: TensorGroup, /, **parameters: Any) -> torch.Tensor:
        base = group.base.tensor
        entries = group.non_base
        if not entries:
            return base
        rescale = RescaleNorm.l1 if parameters["rescale"] else None
        n = len(entries)
        deltas = base.new_empty((n, base.numel()))
        flat_base = base.reshape(-1)
        for index, entry in enumerate(entries):
            delta = torch.sub(entry.tensor.reshape(-1), flat_base, out=deltas[index])
            density = parameters["density"][entry.id]
            if self.sparsification_method == SparsificationMethod.magnitude and rescale is None:
                _trim_by_magnitude_(delta, density)
            elif self.sparsification_method == SparsificationMethod.random:
                random_drop_(delta, density, rescale is not None)
            elif self.sparsification_method:
                deltas[index] = sparsify(
                    delta.view(base.shape),
                    density=density,
                    method=self.sparsification_method,
                    rescale_norm=rescale,
                    **{k: parameters[k][entry.id] for k in ("gamma", "epsilon") if k in parameters},
                ).reshape(-1)
            del delta
        weights = torch.tensor(
            [parameters["weight"][e.id] for e in entries], dtype=deltas.dtype, device=deltas.device
        ).unsqueeze(-1)
        divisor_all = None
        if not self.consensus_method:
            divisor_all = weights.sum(dim=0)
            divisor_all[divisor_all.abs() < 1e-8] = 1
        out = torch.empty_like(flat_base)
        lam = parameters["lambda"]
        total = flat_base.numel()
        # Chunks of ~1M elements (all rows together: a few MB) keep the temporaries in cache while
        # each torch op is still large enough for torch's own threads. Measured on the 2-core
        # box (benchmarks/merge_speed.py, 0.47B parameters, RESULTS.md 1c): 33.7 s per TIES
        # merge, against 42.9 s with cache-sized single-core chunks shared by a thread pool (the
        # dispatch of ~45k chunks x 15 ops held the GIL). Each output element depends only on
        # its own column of `deltas`, so chunking changes no rounding.
        step = max(1024, (_CHUNK_ELEMENTS // (n + 1)) & ~1023)

        for a in range(0, total, step):
            b = min(total, a + step)
            d = deltas[:, a:b]
            d.mul_(weights)
            if self.consensus_method:
                # mergekit's get_mask: sign(delta) == the majority sign (+1 where the sum, or the
                # count of signs, is >= 0, else -1); zeros never match. One sign and one
                # comparison over the rows (measured 0.85x of DARE-TIES's time against the
                # two comparisons and a select it replaced).
                if self.consensus_method == ConsensusMethod.sum:
                    positive = d.sum(dim=0) >= 0
                else:
                    positive = (d > 0).sum(dim=0) >= (d < 0).sum(dim=0)
                mask = d.sign() == positive.to(d.dtype).mul_(2).sub_(1)
                mixed = d.mul_(mask).sum(dim=0)
                divisor = (weights * mask).sum(dim=0)
                divisor.masked_fill_(divisor == 0, 1)
            else:
                mixed = d.sum(dim=0)
                divisor = divisor_all
            if parameters["normalize"]:
                mixed /= divisor
            if lam != 1:
                mixed *= lam
            torch.add(flat_base[a:b], mixed, out=out[a:b])

        return out.view(base.shape)


def _trim_by_magnitude_(delta: torch.Tensor, density: float) -> None:
    """Zero all but mergekit's count of the largest magnitudes of flat ``delta``, in place.

    mergekit keeps ``k = max(1, int(density * numel))`` elements; surplus elements tied at the
    threshold magnitude are zeroed highest flat indices first (the module's tie rule). One
    masked fill over the whole tensor, with the magnitudes the threshold search computed anyway:
    measured 0.65x the time of recomputing them chunk by chunk in the merge loop (TIES on 4
    tensors of the merge benchmark's shapes, the same tensors out).
    """
    if density >= 1:
        return
    n = delta.numel()
    if density <= 0 or n == 0:
        delta.zero_()
        return
    k = max(1, int(density * n))
    w = delta.abs()
    v, count, ties = _value_and_count_at_desc_rank(w, k - 1)
    if count is None:
        count = int((w >= v).count_nonzero())
    if count > k:
        if ties is None:
            ties = (w == v).nonzero().squeeze(1)
        delta[ties[ties.numel() - (count - k) :]] = 0
    delta.mul_(w >= v)  # as mergekit's ``tensor * mask``: a dropped negative becomes -0.0


_FAST: dict[str, FastTaskArithmetic] = {}


def _linear_without_zero_fill(
    batch: TensorBatch,
    weight: Annotated[torch.Tensor, BatchParameter(float, ParameterScope.INPUT)],
    normalize: bool = True,
) -> torch.Tensor:
    """mergekit 0.1.5's ``linear``, minus its zero-filled accumulator.

    Why: mergekit starts from ``zeros_like`` and ``addcmul_``s every input into it, so a merge
    of N inputs writes the output N + 1 times and reads it N times. Starting from the first
    input times its weight gives the same value in every element (``0 + t*c`` and ``t*c`` round
    once, identically), one write and one read fewer; the other inputs and the normalisation
    are mergekit's operations in mergekit's order. The one visible difference: an element whose
    every term is an exact zero may come out as ``-0.0`` where mergekit writes ``+0.0``, which
    compares equal. Measured by ``benchmarks/merge_speed.py --methods linear`` (RESULTS §13) and
    tested against mergekit's linear in tests/test_merge_kernels.py.
    """
    first = batch.tensors[0]
    if not first.is_floating_point():
        raise TypeError("Linear merging requires floating-point tensors")
    dtype = torch.float64 if first.dtype == torch.float64 else torch.float32
    weight = weight.to(dtype)
    shape = (first.shape[0],) + (1,) * (first.ndim - 1)
    coefficients = [c.reshape(shape) for c in weight.unbind(1)]
    result = torch.mul(first.to(dtype), coefficients[0])
    for tensor, coefficient in zip(batch.tensors[1:], coefficients[1:], strict=True):
        result.addcmul_(tensor, coefficient)
    if normalize:
        result.div_(weight.sum(dim=1).reshape(shape))
    return result.to(first.dtype)


FAST_LINEAR = merge_method(
    _linear_without_zero_fill,
    name="linear",
    pretty_name="Linear",
    reference_url="https://arxiv.org/abs/2203.05482",
)


def fast_method(method: MergeMethod) -> MergeMethod:
    """The fast variant of a mergekit method where one exists, else the method itself."""
    if method is _mergekit_methods.get("linear"):
        return FAST_LINEAR
    if not isinstance(method, GeneralizedTaskArithmeticMerge) or isinstance(
        method, FastTaskArithmetic
    ):
        return method
    fast = _FAST.get(method.spec.name)
    if fast is None:
        fast = _FAST[method.spec.name] = FastTaskArithmetic.wrap(method)
    return fast


def has_fast_kernel(method: MergeMethod) -> bool:
    return fast_method(method) is not method


def uses_philox(method: MergeMethod) -> bool:
    """Whether ``method`` (as it runs: see :func:`fast_method`) draws DARE masks with Philox."""
    return (
        isinstance(method, FastTaskArithmetic)
        and method.sparsification_method == SparsificationMethod.random
    )


__all__ = [
    "ARITHMETIC_FAST",
    "ARITHMETIC_KEY",
    "ARITHMETIC_MERGEKIT",
    "DARE_RNG",
    "DARE_RNG_KEY",
    "ConsensusMethod",
    "FAST_LINEAR",
    "FastTaskArithmetic",
    "arithmetic_label",
    "della_magprune",
    "fast_method",
    "has_fast_kernel",
    "magnitude",
    "magnitude_outliers",
    "merge_tensors",
    "rank_mask",
    "sparsify",
    "uses_philox",
]

# Safetensors metadata key of a merge output saying whose arithmetic computed it (the card reads it).
ARITHMETIC_KEY = "hub_merge_arithmetic"
ARITHMETIC_MERGEKIT = "mergekit"
ARITHMETIC_FAST = "hub-merge-kernels"


def arithmetic_label(method: MergeMethod, exact_mergekit: bool = False) -> str:
    """``"hub-merge-kernels"`` for a fast task-arithmetic method (see :func:`fast_method`), else
    ``"mergekit"``: the fast linear gives mergekit's values, so its output says ``mergekit``."""
    if exact_mergekit or not isinstance(method, FastTaskArithmetic):
        return ARITHMETIC_MERGEKIT
    return ARITHMETIC_FAST
