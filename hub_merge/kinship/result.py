"""The result of a kinship pass: the matrix, its per-group and per-layer breakdowns, and tables.

Breakdowns are kept as :class:`~hub_merge.kinship.stats.KinshipStats` (they add up) and turned
into matrices on demand, so a result is cheap to build and can be shown or saved as JSON.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from ..errors import KinshipError
from .stats import KinshipStats


def _jsonable(matrix: np.ndarray) -> list[list[float | None]]:
    return [[None if math.isnan(v) else float(v) for v in row] for row in matrix]


@dataclass
class KinshipResult:
    """A kinship matrix with the per-group and per-layer breakdowns it was accumulated from.

    Examples:
        >>> result = kinship_matrix([a, b, c], base)  # doctest: +SKIP
        >>> result.pair("a", "b"), result.mean_pairwise()  # doctest: +SKIP
    """

    names: list[str]
    metric: str
    matrix: np.ndarray
    n_params: int
    stats: KinshipStats
    group_stats: dict[str, KinshipStats] = field(default_factory=dict)
    layer_stats: dict[int, KinshipStats] = field(default_factory=dict)

    @property
    def groups(self) -> dict[str, np.ndarray]:
        """Kinship per named tensor group (attention, mlp, embeddings, norm, lm_head, other)."""
        return {g: s.matrix(self.metric) for g, s in self.group_stats.items()}  # type: ignore[arg-type]

    @property
    def layers(self) -> dict[int, np.ndarray]:
        """Kinship per transformer block index: where two models differ."""
        return {i: s.matrix(self.metric) for i, s in sorted(self.layer_stats.items())}  # type: ignore[arg-type]

    def _index(self, name: str | int) -> int:
        if isinstance(name, int):
            return name
        try:
            return self.names.index(name)
        except ValueError:
            raise KinshipError(
                f"No model named {name!r} here; have {', '.join(self.names)}."
            ) from None

    def pair(self, a: str | int, b: str | int) -> float:
        return float(self.matrix[self._index(a), self._index(b)])

    def mean_pairwise(self, members: Iterable[str | int] | None = None) -> float:
        """Kinship of a group of models: the mean over its distinct pairs (paper's convention)."""
        idx = sorted({self._index(m) for m in (members if members is not None else self.names)})
        values = [self.matrix[i, j] for k, i in enumerate(idx) for j in idx[k + 1 :]]
        return float(np.mean(values)) if values else float("nan")

    def to_dict(self) -> dict:
        return {
            "names": list(self.names),
            "metric": self.metric,
            "n_params": self.n_params,
            "matrix": _jsonable(self.matrix),
            "groups": {g: _jsonable(m) for g, m in self.groups.items()},
            "layers": {str(i): _jsonable(m) for i, m in self.layers.items()},
        }

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def table(self, *, title: str | None = None, matrix: np.ndarray | None = None):
        """A rich Table of the matrix (or of a breakdown matrix given as ``matrix``)."""
        from rich.table import Table

        values = self.matrix if matrix is None else matrix
        table = Table(title=title or f"Model kinship ({self.metric}, {self.n_params:,} parameters)")
        table.add_column("")
        for name in self.names:
            table.add_column(name, justify="right")
        for name, row in zip(self.names, values, strict=True):
            table.add_row(name, *("n/a" if math.isnan(v) else _fmt(v, self.metric) for v in row))
        return table

    def layer_table(self):
        """A rich Table of per-layer kinship: one row per block, one column per model pair."""
        from rich.table import Table

        pairs = [(i, j) for i in range(len(self.names)) for j in range(i + 1, len(self.names))]
        table = Table(title=f"Kinship per layer ({self.metric})")
        table.add_column("layer", justify="right")
        for i, j in pairs:
            table.add_column(f"{self.names[i]} / {self.names[j]}", justify="right")
        for layer, m in self.layers.items():
            table.add_row(str(layer), *(_fmt(m[i, j], self.metric) for i, j in pairs))
        return table

    def __str__(self) -> str:
        from rich.console import Console

        buffer = io.StringIO()
        Console(file=buffer, width=120, color_system=None).print(self.table())
        return buffer.getvalue()


def _fmt(value: float, metric: str) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:.4g}" if metric == "euclidean" else f"{value:+.4f}"
