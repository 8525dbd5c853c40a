"""DAM before and after issue 23 on the tiny zoo's adapters: same steps, dev fitness, 3 seeds.

"old" is the pre-issue-23 training as close as settings allow: AdamW, no gradient clipping, and
the similarity term 4x (the KL without T² at T = 2; AdamW is invariant to the loss's overall
scale). It cannot switch off what is now structural: coefficients on every linear layer
(lm_head included) and bias coefficients at 1 (the tiny zoo's Llama has no biases).

    OMP_NUM_THREADS=1 python benchmarks/dam_old_new.py --steps 30
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time

import torch

from hub_merge.search import SearchConfig, search
from hub_merge.zoo import build_tiny_zoo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default="/tmp/dam_old_new")
    args = parser.parse_args()
    torch.set_num_threads(1)
    zoo = build_tiny_zoo()
    names = sorted(zoo.adapters)
    common = {"steps": args.steps, "lr": 0.05, "train_batch_size": 8, "max_rows": 64}
    configs = {
        "old": {**common, "optimizer": "adamw", "max_grad_norm": 0.0, "similarity_weight": 0.04},
        "new": dict(common),
        "new-adamw": {**common, "optimizer": "adamw"},
    }
    print("| training | DAM dev fitness (mean ± sd) | per seed | uniform | wall s |")
    print("| --- | ---: | --- | ---: | ---: |")
    for label, settings in configs.items():
        fits, uniform = [], None
        start = time.perf_counter()
        for seed in range(args.seeds):
            out = f"{args.out}/{label}-{seed}"
            shutil.rmtree(out, ignore_errors=True)
            result = search(
                SearchConfig(
                    base=str(zoo.base),
                    experts=[str(zoo.adapters[n]) for n in names],
                    tasks=[str(zoo.tasks[n]) for n in names],
                    train_tasks=[str(zoo.train[n]) for n in names],
                    out=out,
                    strategy="dam",
                    limit=16,
                    device="cpu",
                    progress=False,
                    settings=settings,
                    seed=seed,
                    materialize=[],
                )
            )
            dam = next(n for n in result.tree.nodes.values() if n.method == "dam")
            fits.append(dam.fitness)
            uniform = result.tree.nodes["uniform"].fitness
        sd = statistics.stdev(fits) if len(fits) > 1 else 0.0
        seeds = ", ".join(f"{f:.4f}" for f in fits)
        wall = time.perf_counter() - start
        print(
            f"| {label} | {statistics.mean(fits):.4f} ± {sd:.4f} | {seeds} | {uniform:.4f} "
            f"| {wall:.0f} |"
        )


if __name__ == "__main__":
    main()
