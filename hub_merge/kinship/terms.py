"""One model's delta for one tensor, as the pass consumes it: dense rows, factored, or zero.

The shared vocabulary between sources (which produce terms) and the accumulation (which reads
them), so neither has to import the other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class DenseTerm:
    """Full weights of one tensor, read by row ranges, so a large tensor is never whole in memory."""

    read: Callable[[int, int], torch.Tensor]  # (start, stop) -> rows, native dtype, any device


@dataclass
class LowRankTerm:
    """delta[rows, cols] = U @ V in float64; U (R, r), V (r, C)."""

    U: torch.Tensor
    V: torch.Tensor


Term = DenseTerm | LowRankTerm | None  # full weights / factored delta / zero delta
