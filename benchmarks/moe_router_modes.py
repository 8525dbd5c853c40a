"""Router accuracy of every gate mode on the tiny zoo (issue 23: is `hidden` the better default?).

Builds a 4-expert MoE per router mode and top-k, with the zoo's TRAIN files as positive prompts,
and prints the fraction of test-row tokens routed to their own expert (chance 0.25).

    OMP_NUM_THREADS=1 python benchmarks/moe_router_modes.py full       # or: adapters
"""

from __future__ import annotations

import sys
import time

import torch

from hub_merge.moe import ExpertSpec, MoeSettings, build_moe
from hub_merge.zoo import build_tiny_zoo

MODES = ["hidden", "hidden-mean", "mergekit", "mergekit-mean"]


def main() -> None:
    torch.set_num_threads(1)
    zoo = build_tiny_zoo()
    names = ["add", "reverse", "sort", "uppercase"]
    kind = sys.argv[1] if len(sys.argv) > 1 else "full"
    models = zoo.experts if kind == "full" else zoo.adapters
    for mode in MODES:
        for top_k in (1, 2):
            start = time.perf_counter()
            result = build_moe(
                zoo.base,
                [ExpertSpec(models[n], str(zoo.train[n]), n) for n in names],
                f"/tmp/moe_router_modes/{kind}_{mode}_{top_k}",
                MoeSettings(router=mode, top_k=top_k),
                test_rows=[str(zoo.tasks[n]) for n in names],
                device="cpu",
                overwrite=True,
            )
            accuracy = {k: round(v["mean"], 3) for k, v in result.manifest["routing"].items()}
            print(kind, mode, f"top{top_k}", accuracy, f"{time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    main()
