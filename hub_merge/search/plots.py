"""Pictures of a search: fitness by generation, and the family tree with the winner highlighted."""

from __future__ import annotations

from pathlib import Path

from ..evaluate.fitness import fitness_label
from ..lineage import FamilyTree

__all__ = ["has_trajectory", "plot_family_tree", "plot_fitness", "plot_trajectory"]


def _figure(width: float, height: float, rows: int = 1):
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    return plt, plt.subplots(rows, 1, figsize=(width, height), sharex=rows > 1)


def _save(fig, path: Path, dpi: int = 120) -> Path:
    from ..plots import save_figure  # one atomic PNG writer for the package

    path = Path(path)
    save_figure(fig, path, dpi)
    return path


def plot_fitness(tree: FamilyTree, path: str | Path) -> Path:
    """Best fitness per generation, every node as a dot, the population's spread, the baseline.

    A population strategy (evolve) records each generation's fitness mean, spread and range
    (``GenerationRecord.stats``): they are drawn as a band; greedy's top-k kinship goes on a
    second axis; the uniform average is a dashed line, the bar a search has to clear.
    """
    plt, (fig, ax) = _figure(7, 4)
    try:
        gens = [g.generation for g in tree.generations]
        ax.plot(
            gens, [g.best_fitness for g in tree.generations], "o-", color="C0", label="best fitness"
        )
        nodes = [n for n in tree.nodes.values() if n.fitness is not None]
        ax.scatter(
            [n.generation for n in nodes],
            [n.fitness for n in nodes],
            s=12,
            color="C0",
            alpha=0.35,
            label="every model",
        )
        spread = [g for g in tree.generations if {"min", "max", "mean"} <= set(g.stats)]
        if spread:
            xs = [g.generation for g in spread]
            ax.fill_between(
                xs,
                [g.stats["min"] for g in spread],
                [g.stats["max"] for g in spread],
                color="C2",
                alpha=0.15,
                label="population range",
            )
            std = [g.stats.get("std") or 0.0 for g in spread]
            mean = [g.stats["mean"] for g in spread]
            ax.errorbar(
                xs, mean, yerr=std, fmt="^-", color="C2", ms=4, label="population mean ± sd"
            )
        uniform = tree.nodes.get("uniform")
        if uniform is not None and uniform.fitness is not None:
            ax.axhline(uniform.fitness, color="0.4", ls="--", lw=1, label="uniform average")
        ax.set_xlabel("generation")
        ax.set_ylabel(f"fitness ({fitness_label(tree.score_metric, tree.scoring_rule()[1])})")
        if len(gens) <= 20:
            ax.set_xticks(gens)
        kin = [(g.generation, g.top_kinship) for g in tree.generations if g.top_kinship is not None]
        handles, labels = ax.get_legend_handles_labels()
        if kin:
            ax2 = ax.twinx()
            ax2.plot(
                [k[0] for k in kin],
                [k[1] for k in kin],
                "s--",
                color="C3",
                label=f"top-k kinship ({tree.kinship_metric})",
            )
            ax2.set_ylabel("mean kinship among the top-k")
            h2, l2 = ax2.get_legend_handles_labels()
            handles, labels = handles + h2, labels + l2
        ax.legend(handles, labels, loc="lower right", fontsize=8)
        ax.set_title(f"Merge search ({tree.strategy}): fitness by generation")
        return _save(fig, Path(path))
    finally:
        plt.close(fig)


def plot_family_tree(tree: FamilyTree, path: str | Path) -> Path:
    """Nodes placed by generation (x) and fitness rank (y), edges to parents, winner in gold."""
    by_gen: dict[int, list[str]] = {}
    for node in tree.nodes.values():
        if node.kind != "base":
            by_gen.setdefault(node.generation, []).append(node.id)
    widest = max((len(v) for v in by_gen.values()), default=1)
    plt, (fig, ax) = _figure(max(6.0, 2.2 * len(by_gen)), max(3.0, 0.55 * widest + 1))
    try:
        pos: dict[str, tuple[float, float]] = {}
        for gen, ids in by_gen.items():
            ids.sort(key=lambda i: -(tree.nodes[i].fitness or float("-inf")))
            for rank, node_id in enumerate(ids):
                pos[node_id] = (gen, -rank + (len(ids) - 1) / 2)
        lineage = set(tree.ancestors(tree.winner)) if tree.winner else set()
        for node_id, (x, y) in pos.items():
            for parent in tree.nodes[node_id].parents:
                if parent in pos:
                    px, py = pos[parent]
                    on_path = node_id == tree.winner or node_id in lineage
                    ax.plot(
                        [px, x],
                        [py, y],
                        "-",
                        color="goldenrod" if on_path else "0.75",
                        lw=1.6 if on_path else 0.7,
                        zorder=1,
                    )
        fits = [tree.nodes[i].fitness for i in pos if tree.nodes[i].fitness is not None]
        lo, hi = (min(fits), max(fits)) if fits else (0.0, 1.0)
        for node_id, (x, y) in pos.items():
            node = tree.nodes[node_id]
            shade = 0.5 if hi == lo or node.fitness is None else (node.fitness - lo) / (hi - lo)
            winner = node_id == tree.winner
            ax.scatter(
                [x],
                [y],
                s=260 if winner else 120,
                c=[plt.cm.viridis(shade)],
                zorder=2,
                edgecolors="gold" if winner else "black",
                linewidths=3 if winner else 0.5,
                marker="*" if winner else ("s" if node.kind == "expert" else "o"),
            )
            label = node.name if len(node.name) <= 18 else node.name[:17] + "…"
            if node.fitness is not None:
                label += f"\n{node.fitness:.3g}"
            ax.annotate(
                label, (x, y), xytext=(8, 0), textcoords="offset points", fontsize=7, va="center"
            )
        ax.set_xticks(sorted(by_gen))
        ax.set_xlabel("generation (0 = experts)")
        ax.set_yticks([])
        ax.set_xlim(min(by_gen, default=0) - 0.3, max(by_gen, default=0) + 0.9)
        ax.set_title(f"Family tree (winner: {tree.winner}; colour = fitness)")
        return _save(fig, Path(path))
    finally:
        plt.close(fig)


def has_trajectory(tree: FamilyTree) -> bool:
    """Whether the generations carry mixing coefficients (a swarm run) to draw a trajectory of."""
    return any("alpha" in g.stats and "spread" in g.stats for g in tree.generations)


def plot_trajectory(tree: FamilyTree, path: str | Path) -> Path:
    """A swarm's trajectory: global best fitness, the swarm's spread, and α of the global best.

    Reads each generation's ``stats`` (``alpha``, ``alpha_names``, ``spread``), so it draws any
    strategy that searches over mixing coefficients.
    """
    gens = [g for g in tree.generations if "alpha" in g.stats and "spread" in g.stats]
    if not gens:
        raise ValueError("No generation records mixing coefficients (alpha) to plot.")
    plt, (fig, (ax_f, ax_s, ax_a)) = _figure(7, 7.5, rows=3)
    try:
        steps = [g.generation for g in gens]
        ax_f.plot(steps, [g.best_fitness for g in gens], "o-", color="C0", ms=3)
        ax_f.set_ylabel("global best fitness")
        ax_f.set_title("Model Swarms trajectory")
        ax_s.plot(steps, [g.stats["spread"] for g in gens], "s-", color="C2", ms=3)
        ax_s.set_ylabel("swarm spread (RMS dist. in α)")
        names = gens[-1].stats.get("alpha_names") or [
            f"expert {j}" for j in range(len(gens[-1].stats["alpha"]))
        ]
        alphas = [g.stats["alpha"] for g in gens]
        for j, name in enumerate(names):
            ax_a.plot(steps, [a[j] for a in alphas], "-", lw=1.5, label=name)
        ax_a.axhline(0.0, color="0.6", lw=0.6)
        ax_a.set_ylabel("α of the global best")
        ax_a.set_xlabel("generation (swarm step)")
        ax_a.legend(fontsize=7, ncol=min(4, len(names)), loc="best")
        return _save(fig, Path(path))
    finally:
        plt.close(fig)
