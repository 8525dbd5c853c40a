"""The one streaming pass's inner step: sums and Gram matrix of one tensor's N deltas.

Per tensor, one (N+1)×chunk matmul over reused float64 buffers gives the Gram block and the sums
together; factored deltas cost r×r (factored × factored) or r×numel (dense × factored) work, never
a dense B·A. No N×numel copy of a tensor ever exists.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .stats import KinshipStats
from .terms import DenseTerm, LowRankTerm, Term

# Elements per chunk in the dense accumulation (per model, float64): bounds temporary memory, and
# keeps the skinny (N+1)×chunk Gram matmul in cache (4x faster on CPU than 1M-element chunks).
_CHUNK = 1 << 16


def tensor_stats(
    terms: list[Term],
    read_base: Callable[[int, int], torch.Tensor],
    shape: tuple[int, ...],
    device: torch.device,
) -> KinshipStats:
    """Sums and Gram matrix of one tensor's N deltas, float64, without any N×numel copy."""
    size = len(terms)
    numel = math.prod(shape)
    rows = shape[0] if shape else 1
    cols = numel // rows if rows else 0
    gram = torch.zeros((size, size), dtype=torch.float64, device=device)
    sums = torch.zeros(size, dtype=torch.float64, device=device)
    dense = [i for i, t in enumerate(terms) if isinstance(t, DenseTerm)]
    low = [i for i, t in enumerate(terms) if isinstance(t, LowRankTerm)]
    # Factored × factored: r×r products only.
    for k, i in enumerate(low):
        ti = terms[i]
        assert isinstance(ti, LowRankTerm)
        sums[i] = ti.U.sum(0) @ ti.V.sum(1)
        for j in low[k:]:
            tj = terms[j]
            assert isinstance(tj, LowRankTerm)
            gram[i, j] = gram[j, i] = ((ti.U.T @ tj.U) * (ti.V @ tj.V.T)).sum()
    if dense:
        readers = [terms[i].read for i in dense]  # type: ignore[union-attr]
        # Bigger chunks on a GPU: fewer host-to-device copies; memory there is not the CPU cache.
        chunk = _CHUNK if device.type == "cpu" else _CHUNK * 64
        step = max(1, chunk // max(cols, 1))
        idx = torch.tensor(dense, device=device)
        # One reused float64 buffer of k delta chunks plus a row of ones: a single matmul then
        # gives the Gram block (top-left) and the per-model sums (last column) together.
        k = len(dense)
        width = min(rows, step) * cols
        buffer = torch.empty((k + 1, width), dtype=torch.float64, device=device)
        buffer[k].fill_(1.0)
        base64 = torch.empty(width, dtype=torch.float64, device=device)
        block = torch.zeros((k + 1, k), dtype=torch.float64, device=device)
        cross = torch.zeros((len(low), k), dtype=torch.float64, device=device)
        for r0 in range(0, rows, step):
            r1 = min(rows, r0 + step)
            m = (r1 - r0) * cols
            b = base64[:m]
            b.copy_(read_base(r0, r1).reshape(-1))
            xf = buffer[:, :m]  # (k + 1, chunk)
            for j, read in enumerate(readers):
                # upcast, then subtract in float64: two vectorised passes beat one mixed-dtype op
                xf[j].copy_(read(r0, r1).reshape(-1))
                xf[j].sub_(b)
            block.addmm_(xf, xf[:k].T)  # (k + 1, k): Gram rows, then sums
            x = xf[:k].view(k, r1 - r0, cols)
            for c, i in enumerate(low):  # dense × factored: ⟨D, UV⟩ = sum(U ⊙ (D Vᵀ))
                t = terms[i]
                assert isinstance(t, LowRankTerm)
                cross[c] += ((x @ t.V.T) * t.U[r0:r1]).sum((1, 2))  # (k,)
        gram[idx[:, None], idx[None, :]] = block[:k]
        sums[idx] = block[k]
        for c, i in enumerate(low):
            gram[idx, i] = gram[i, idx] = cross[c]
        del buffer, base64
    return KinshipStats(numel, sums.cpu().numpy(), gram.cpu().numpy())
