"""The picture of a DAM merge: how each expert's coefficients spread, layer by layer."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch

from ..layers import layer_index


def coefficient_profile(
    tensors: Mapping[str, torch.Tensor], meta: Mapping[str, str]
) -> dict[str, list[dict[str, float]]]:
    """Per expert, per transformer layer: quantiles (10/50/90 %) of its linear coefficients.

    Embeddings, final norm and head (no layer index) are left out: they are one group each
    and usually frozen at 1/N.
    """
    experts = json.loads(meta.get("experts", "[]"))
    kinds = json.loads(meta.get("kinds", "{}"))
    by_layer: dict[int, list[torch.Tensor]] = {}
    for name, t in tensors.items():
        layer = layer_index(name)
        if layer is None or kinds.get(name) != "linear":
            continue
        by_layer.setdefault(layer, []).append(t.float().reshape(len(experts), -1))
    out: dict[str, list[dict[str, float]]] = {e: [] for e in experts}
    q = torch.tensor([0.1, 0.5, 0.9])
    for layer in sorted(by_layer):
        values = torch.cat(by_layer[layer], dim=1)  # (N, columns of every linear in the layer)
        for k, expert in enumerate(experts):
            lo, mid, hi = torch.quantile(values[k], q).tolist()
            out[expert].append({"layer": layer, "p10": lo, "median": mid, "p90": hi})
    return out


def plot_coefficients(
    tensors: Mapping[str, torch.Tensor], meta: Mapping[str, str], path: str | Path, dpi: int = 120
) -> Path:
    """Median and 10-90 % band of each expert's coefficients per layer, the 1/N start dashed."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from ..atomic import atomic_path
    from ..plots import short_name

    path = Path(path)
    profile = coefficient_profile(tensors, meta)
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    for expert, rows in profile.items():
        if not rows:
            continue
        x = [r["layer"] for r in rows]
        (line,) = ax.plot(
            x, [r["median"] for r in rows], marker="o", ms=3, label=short_name(expert)
        )
        ax.fill_between(
            x,
            [r["p10"] for r in rows],
            [r["p90"] for r in rows],
            color=line.get_color(),
            alpha=0.15,
        )
    if profile:
        ax.axhline(1.0 / len(profile), color="grey", ls="--", lw=1, label="1/N (uniform average)")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer")
    ax.set_ylabel("coefficient per input column")
    ax.set_title("DAM coefficients: median and 10–90 % of each expert's columns, per layer")
    ax.legend(fontsize=8, ncols=2)
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)
    return path
