"""Images for humans: the kinship heatmap (other modules may add their own plots here).

matplotlib runs on the Agg backend (no display on servers and CI), and every image is written to a
temporary file first and renamed into place, so a failed plot never leaves a half-written PNG.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .atomic import atomic_path

if TYPE_CHECKING:
    from .kinship import KinshipResult

__all__ = ["plot_kinship", "short_name"]


def short_name(name: str, limit: int = 24) -> str:
    """A label that fits a heatmap axis: the last path/repo part, ellipsised in the middle."""
    name = name.rstrip("/").split("/")[-1]
    if len(name) <= limit:
        return name
    keep = (limit - 1) // 2
    return f"{name[:keep]}…{name[-(limit - 1 - keep) :]}"


def save_figure(fig, path: Path, dpi: int) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=(path.suffix.lstrip(".") or "png"))


def plot_kinship(
    result: KinshipResult,
    path: str | Path,
    *,
    matrix: np.ndarray | None = None,
    title: str | None = None,
    dpi: int = 120,
) -> Path:
    """Write an annotated heatmap of a kinship matrix (PNG, or any format matplotlib knows).

    Correlations and cosines use a fixed diverging scale from -1 to 1 so images are comparable;
    Euclidean distances use a sequential scale from 0. Undefined cells (NaN) are left blank.

    >>> plot_kinship(kinship_matrix([a, b], base), "kinship.png")  # doctest: +SKIP
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    values = np.asarray(result.matrix if matrix is None else matrix, dtype=float)
    labels = [short_name(n) for n in result.names]
    size = len(labels)
    distance = result.metric == "euclidean"
    if distance:
        finite = values[np.isfinite(values)]
        vmin, vmax, cmap = (
            0.0,
            float(finite.max()) if finite.size and finite.max() > 0 else 1.0,
            "viridis_r",
        )
    else:
        vmin, vmax, cmap = -1.0, 1.0, "RdBu_r"
    side = 2.5 + 0.7 * size
    fig, ax = plt.subplots(figsize=(side + 1.0, side))
    try:
        image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=vmin, vmax=vmax)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label=result.metric)
        ax.set_xticks(range(size), labels=labels, rotation=45, ha="right", rotation_mode="anchor")
        ax.set_yticks(range(size), labels=labels)
        font = max(6, 11 - size // 3)
        for i in range(size):
            for j in range(size):
                v = values[i, j]
                if math.isnan(v):
                    continue
                light = abs(v) > 0.6 if not distance else (v - vmin) / (vmax - vmin or 1) < 0.35
                ax.text(
                    j,
                    i,
                    f"{v:.2f}" if not distance else f"{v:.3g}",
                    ha="center",
                    va="center",
                    fontsize=font,
                    color="white" if light else "black",
                )
        ax.set_title(title or f"Model kinship ({result.metric})")
        fig.tight_layout()
        save_figure(fig, path, dpi)
    finally:
        plt.close(fig)
    return path
