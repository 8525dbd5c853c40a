"""evolve's gene bounds on the tiny zoo: ``clip`` (our default) vs ``abs`` (mergekit-evolve's).

Four full experts, DARE-TIES (the default), budget 5 baselines + 3 generations, dev fitness of
the best evolved candidate per seed. Tiny models show no merging gains (models-here.md), so this
only checks that the default is not worse than mergekit-evolve's handling.

    OMP_NUM_THREADS=1 python benchmarks/evolve_bounds.py
"""

from __future__ import annotations

import shutil
import statistics

import torch

from hub_merge.search import SearchConfig, search
from hub_merge.zoo import build_tiny_zoo


def main() -> None:
    torch.set_num_threads(1)
    zoo = build_tiny_zoo()
    names = ["add", "reverse", "sort", "uppercase"]
    for bounds in ("clip", "abs"):
        best, uniform = [], None
        for seed in range(3):
            out = f"/tmp/evolve_bounds/{bounds}-{seed}"
            shutil.rmtree(out, ignore_errors=True)
            result = search(
                SearchConfig(
                    base=str(zoo.base),
                    experts=[str(zoo.experts[n]) for n in names],
                    tasks=[str(zoo.tasks[n]) for n in names],
                    out=out,
                    strategy="evolve",
                    limit=16,
                    device="cpu",
                    progress=False,
                    budget=5 + 3 * 10,  # 8 genes: population 4 + floor(3 ln 8) = 10
                    settings={"bounds": bounds},
                    seed=seed,
                    materialize=[],
                )
            )
            nodes = result.tree.nodes
            best.append(max(n.fitness for n in nodes.values() if n.generation >= 1))
            uniform = nodes["uniform"].fitness
        print(
            f"{bounds}: best evolved dev fitness {statistics.mean(best):.4f} ± "
            f"{statistics.stdev(best):.4f} ({', '.join(f'{b:.4f}' for b in best)}); "
            f"uniform {uniform:.4f}"
        )


if __name__ == "__main__":
    main()
