"""Kinship's sufficient statistics and the metrics computed from them.

Pearson, cosine and Euclidean kinship all come from the same three sums over the shared
parameters: n, per-model Σx_i and the Gram matrix Σx_i·x_j. Keeping only those (float64) is what
lets the whole N×N matrix, and every per-group and per-layer breakdown, come from one pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from ..errors import KinshipError

Metric = Literal["pearson", "cosine", "euclidean"]
METRICS: tuple[str, ...] = get_args(Metric)


@dataclass
class KinshipStats:
    """The sufficient statistics of N task vectors over a set of parameters.

    ``n`` parameters, per-model ``sums`` (Σx_i) and the ``gram`` matrix (Σx_i·x_j), float64.
    Stats of disjoint parameter sets add up, which is what makes groups and layers consistent.
    """

    n: int
    sums: np.ndarray  # (N,)
    gram: np.ndarray  # (N, N)

    @classmethod
    def zeros(cls, size: int) -> KinshipStats:
        return cls(0, np.zeros(size), np.zeros((size, size)))

    def __add__(self, other: KinshipStats) -> KinshipStats:
        return KinshipStats(self.n + other.n, self.sums + other.sums, self.gram + other.gram)

    def matrix(self, metric: Metric = "pearson") -> np.ndarray:
        """The N×N kinship matrix; NaN where a model's delta is constant (undefined)."""
        check_metric(metric)
        gram, sums = self.gram, self.sums
        if metric == "euclidean":
            sq = np.diag(gram)[:, None] + np.diag(gram)[None, :] - 2.0 * gram
            out = np.sqrt(np.clip(sq, 0.0, None))
            np.fill_diagonal(out, 0.0)
            return out
        cov = gram - np.outer(sums, sums) / self.n if metric == "pearson" else gram
        scale = np.sqrt(np.clip(np.diag(cov), 0.0, None))
        with np.errstate(divide="ignore", invalid="ignore"):
            out = cov / np.outer(scale, scale)
        out[np.outer(scale, scale) == 0] = np.nan
        return np.clip(out, -1.0, 1.0)

    def to_dict(self) -> dict:
        return {"n": self.n, "sums": self.sums.tolist(), "gram": self.gram.tolist()}


def self_kinship(metric: str) -> float:
    """A model's kinship with itself: distance 0 for Euclidean, correlation 1 otherwise."""
    check_metric(metric)
    return 0.0 if metric == "euclidean" else 1.0


def check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise KinshipError(f"Unknown kinship metric {metric!r}: use one of {', '.join(METRICS)}.")
