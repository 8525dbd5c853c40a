"""Per-candidate cost of evolve's candidates on the tiny zoo: affine (in place) vs TIES/DARE-TIES.

Issue 23: evolve's default became DARE-TIES with per-layer-group genes (Akiba et al.), a
non-affine merge that the engine builds as a state dict instead of applying in place. This
times each candidate's scoring (merge + evaluation) through the real backend, per method.

    OMP_NUM_THREADS=1 python benchmarks/evolve_cost.py [--out /tmp/evolve_cost]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

import torch

from hub_merge.search import SearchConfig, search
from hub_merge.search import backend as engine
from hub_merge.zoo import build_tiny_zoo

ROWS = [
    ("task_arithmetic, global genes (affine)", {"method": "task_arithmetic", "layer_groups": 1}),
    ("dare_ties, global genes", {"method": "dare_ties", "layer_groups": 1}),
    ("dare_ties, 2 layer groups", {"method": "dare_ties", "layer_groups": 2}),
    ("ties, global genes", {"method": "ties", "layer_groups": 1}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="/tmp/evolve_cost")
    parser.add_argument("--budget", type=int, default=34)
    args = parser.parse_args()
    torch.set_num_threads(1)
    times: list[tuple[str, float]] = []
    evaluate = engine.EngineBackend.evaluate

    def timed(self, recipe):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        out = evaluate(self, recipe)
        times.append((recipe.method, time.perf_counter() - start))
        return out

    engine.EngineBackend.evaluate = timed  # type: ignore[method-assign]
    zoo = build_tiny_zoo()
    names = ["add", "reverse", "sort"]
    print("| candidates | n | median ms | mean ms |")
    print("| --- | ---: | ---: | ---: |")
    for label, settings in ROWS:
        times.clear()
        out = Path(args.out) / f"{settings['method']}_{settings['layer_groups']}"
        shutil.rmtree(out, ignore_errors=True)
        config = SearchConfig(
            base=str(zoo.base),
            experts=[str(zoo.experts[n]) for n in names],
            tasks=[str(zoo.tasks[n]) for n in names],
            out=str(out),
            strategy="evolve",
            limit=8,
            device="cpu",
            progress=False,
            budget=args.budget,
            settings=settings,
            seed=0,
        )
        search(config)
        own = [t for method, t in times if method == settings["method"]]
        median, mean = statistics.median(own) * 1e3, statistics.mean(own) * 1e3
        print(f"| {label} | {len(own)} | {median:.0f} | {mean:.0f} |", flush=True)


if __name__ == "__main__":
    main()
