"""Router accuracy of every gate mode on the tiny zoo (issue 23: is `hidden` still the better default?).

Builds a 4-expert MoE per router mode and top-k, with the zoo's TRAIN files as positive prompts,
and prints the fraction of test-row tokens routed to their own expert (chance 0.25).

    OMP_NUM_THREADS=1 python benchmarks/moe_router_modes.py full       # or: adapters
"""

import sys
import time

import torch

torch.set_num_threads(1)
from hub_merge.moe import ExpertSpec, MoeSettings, build_moe
from hub_merge.zoo import build_tiny_zoo

zoo = build_tiny_zoo()
names = ["add", "reverse", "sort", "uppercase"]
kind = sys.argv[1]
models = zoo.experts if kind == "full" else zoo.adapters
for mode in ["hidden", "hidden-mean", "mergekit", "mergekit-mean"]:
    for top_k in (1, 2):
        t = time.perf_counter()
        r = build_moe(
            zoo.base,
            [ExpertSpec(models[n], str(zoo.train[n]), n) for n in names],
            f"/tmp/moe_router_modes/moe_{kind}_{mode}_{top_k}",
            MoeSettings(router=mode, top_k=top_k),
            test_rows=[str(zoo.tasks[n]) for n in names],
            device="cpu",
            overwrite=True,
        )
        rt = r.manifest["routing"]
        print(
            kind,
            mode,
            f"top{top_k}",
            {k: round(v["mean"], 3) for k, v in rt.items()},
            f"{time.perf_counter() - t:.1f}s",
            flush=True,
        )
