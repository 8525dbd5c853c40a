"""Candidates per hour of a merge search, four ways, on the smol zoo, measured in one run.

Every row scores the same candidates (task-arithmetic mixes of the zoo's LoRA experts with
seeded random weights, as Model Swarms and evolve propose them) with the same ``Evaluator`` on
the same dev rows:

1. naive: what a user scripts today: ``mergekit-yaml`` writes the merge to disk,
   ``AutoModelForCausalLM.from_pretrained`` loads it, the Evaluator scores it;
2. in-memory: hub-merge's ``MergeSession.merge_recipe`` + ``to_model`` (a new state dict per
   candidate, copied into one reusable model);
3. in-place: ``InPlaceModel``: only the adapted modules change, ``W_base + Σ α_j s_j B_j A_j``,
   restored exactly after scoring;
4. floor: scoring alone, the model already in place (forward passes only);
5. ``--workers N``: the in-place path fanned out to N local Ray actors (start-up reported apart).

Each row prints seconds per candidate, candidates per hour and its ratio to (1); the in-place
row also prints its apply + restore time as a share of the floor's scoring time. Times are
medians over the candidates. A noisy shared machine: compare the ratios, not absolute times
across runs.

    python benchmarks/search_speed.py --limit 8 --candidates 4 --naive 1 --workers 2
    python benchmarks/search_speed.py --synthetic 0.5b --device cuda   # no zoo, no download

``--synthetic SIZE`` builds a random-weight zoo of that size first (``benchmarks/synthetic.py``:
``tiny`` for a CPU smoke run, ``0.5b`` for a GPU); its scores mean nothing, its timings do.
``--naive 0`` leaves the mergekit-yaml row out (ratios are then against nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.merge_speed import mergekit_yaml_cmd  # noqa: E402
from hub_merge.evaluate import Evaluator, load_tasks  # noqa: E402
from hub_merge.merge import MergeSession  # noqa: E402
from hub_merge.merge.inplace import InPlaceModel  # noqa: E402
from hub_merge.merge.recipe import MergeRecipe, ModelEntry  # noqa: E402

ZOO = Path.home() / ".cache/hub_merge/zoo/smol-v1"


def candidates(
    base: str, adapters: list[str], n: int, seed: int, method: str = "task_arithmetic"
) -> list[MergeRecipe]:
    """Seeded mixes, weights on the simplex (a swarm particle's position).

    ``task_arithmetic`` (the default rows) is affine; ``ties`` and ``dare_ties`` (density 0.5,
    DARE seeded) are the extra rows: their kernels run on the adapted modules in place.
    """
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        w = rng.dirichlet(np.ones(len(adapters)))
        extra = {} if method == "task_arithmetic" else {"density": 0.5}
        out.append(
            MergeRecipe(
                method=method,
                base=base,
                models=[
                    ModelEntry(model=a, parameters={"weight": float(x), **extra})
                    for a, x in zip(adapters, w, strict=True)
                ],
                parameters={"normalize": False} if method == "task_arithmetic" else {},
                seed=seed if method.startswith("dare") else None,
            )
        )
    return out


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def in_place(inplace: InPlaceModel, ev: Evaluator, recipes: list[MergeRecipe], device: str):
    """Per candidate: total seconds, apply + restore seconds, scores (plan built on the clock)."""
    total, apply, got = [], [], []
    for r in recipes:
        t0 = time.perf_counter()
        plan = inplace.plan(r)
        assert plan is not None, r.method
        with inplace.applied(plan) as m:
            _sync(device)
            t1 = time.perf_counter()
            got.append(ev.score(m))
            t2 = time.perf_counter()
        _sync(device)
        t3 = time.perf_counter()
        total.append(t3 - t0)
        apply.append((t1 - t0) + (t3 - t2))
    return total, apply, got


def in_memory(session: MergeSession, ev: Evaluator, recipes: list[MergeRecipe], device: str):
    """Per candidate: total seconds, merge + load seconds, scores (the merge path)."""
    total, merge, got = [], [], []
    for r in recipes:
        t0 = time.perf_counter()
        state = session.merge_recipe(r)
        m = session.to_model(state)
        _sync(device)
        t1 = time.perf_counter()
        got.append(ev.score(m))
        total.append(time.perf_counter() - t0)
        merge.append(t1 - t0)
        del state, m
    session.to_model(session.base.state)
    return total, merge, got


def profile_floor(ev: Evaluator, model, top: int = 12) -> str:
    """What the floor's scoring is made of: torch.profiler's top operators over one scoring
    pass, the share of that pass its operators account for (the rest is Python: batching,
    padding, reading the answers' log-probabilities) and cProfile's top Python functions."""
    import cProfile
    import io
    import pstats

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        wall, _ = timed(lambda: ev.score(model))
    events = prof.key_averages()
    ops = sum(e.self_cpu_time_total for e in events) / 1e6
    lines = [
        f"floor profile: one scoring pass {wall:.3f} s under torch.profiler; its operators' "
        f"self time {ops:.3f} s ({ops / wall:.0%} of the pass)",
        events.table(sort_by="self_cpu_time_total", row_limit=top),
    ]
    pr = cProfile.Profile()
    pr.enable()
    ev.score(model)
    pr.disable()
    buf = io.StringIO()
    pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(top)
    lines.append(buf.getvalue())
    return "\n".join(lines)


def timed(fn) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def row(name: str, secs: list[float], naive: float | None, extra: str = "") -> dict:
    s = statistics.median(secs)
    r = {"row": name, "s_per_candidate": s, "per_hour": 3600 / s, "n": len(secs), "note": extra}
    r["vs_naive"] = None if naive is None else naive / s
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", type=Path, default=ZOO)
    ap.add_argument("--limit", type=int, default=8, help="dev rows per task")
    ap.add_argument("--candidates", type=int, default=4, help="candidates per row (2-4)")
    ap.add_argument("--naive", type=int, default=1, help="candidates for the mergekit-yaml row")
    ap.add_argument("--workers", type=int, default=0, help="add a local-Ray row with N workers")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--lora-cache", type=Path, help="mergekit's --lora-merge-cache (reused)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    ap.add_argument(
        "--profile", action="store_true", help="profile one scoring pass of the floor (row 4)"
    )
    ap.add_argument(
        "--methods",
        default="ties,dare_ties",
        help="extra rows: candidates of these methods, in place and in memory ('' for none)",
    )
    ap.add_argument(
        "--synthetic",
        choices=["tiny", "smol", "0.5b"],
        help="build a random-weight zoo of this size in a temporary folder and use it",
    )
    args = ap.parse_args()
    synth_dir = None
    if args.synthetic:
        from benchmarks.synthetic import build_synthetic_zoo

        synth_dir = Path(tempfile.mkdtemp(prefix="synthetic-zoo-"))
        t0 = time.perf_counter()
        args.zoo = build_synthetic_zoo(synth_dir, size=args.synthetic)
        print(
            f"built synthetic zoo {args.synthetic} in {time.perf_counter() - t0:.1f} s",
            file=sys.stderr,
        )
    try:
        run(args)
    finally:
        if synth_dir is not None:
            shutil.rmtree(synth_dir, ignore_errors=True)


def run(args: argparse.Namespace) -> None:

    zoo = json.loads((args.zoo / "zoo.json").read_text())
    base = str(args.zoo / zoo["base"])
    adapters = [str(args.zoo / p) for p in zoo["adapters"].values()]
    tasks = load_tasks([args.zoo / p for p in zoo["tasks"].values()], limit=args.limit)
    recipes = candidates(base, adapters, args.candidates, args.seed)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    ev = Evaluator(tasks, tok, device=args.device)
    rows: list[dict] = []
    scores: dict[str, list[dict]] = {}

    session = MergeSession(base, device=args.device)
    inplace = InPlaceModel(session, base_source=base)
    model = inplace.model
    ev.score(model)  # warm-up (allocator, kernels)

    # (4) the floor: forward passes only, nothing applied
    floor = [timed(lambda: ev.score(model))[0] for _ in recipes]
    if args.profile:
        print(profile_floor(ev, model), flush=True)

    # (3) in place: apply, score, restore; apply + restore timed apart from scoring
    ip_total, ip_apply, ip_scores = in_place(inplace, ev, recipes, args.device)
    scores["in-place"] = ip_scores
    print(f"in place: {statistics.median(ip_total):.2f} s per candidate", file=sys.stderr)

    # (2) today's in-memory path (reuses the same model object, so it runs after in-place)
    mem, mem_merge, mem_scores = in_memory(session, ev, recipes, args.device)
    scores["in-memory"] = mem_scores

    # (3m, 2m) TIES / DARE-TIES candidates: the kernel in place, and the merge path
    extra: list[tuple[str, list[float], list[float], list[float], list[float]]] = []
    for method in [m for m in args.methods.split(",") if m]:
        rs = candidates(base, adapters, args.candidates, args.seed, method)
        ip_t, ip_a, ip_s = in_place(inplace, ev, rs, args.device)
        mem_t, mem_m, mem_s = in_memory(session, ev, rs, args.device)
        worst_m = max(abs(a[t] - b[t]) for a, b in zip(ip_s, mem_s, strict=True) for t in a)
        extra.append((method, ip_t, ip_a, mem_t, mem_m))
        print(
            f"{method}: largest score difference in place vs merge path {worst_m:.2e}",
            file=sys.stderr,
        )

    # (1) naive: mergekit-yaml to disk, from_pretrained, the same Evaluator. mergekit needs a
    # cache folder for base+LoRA models; a user's script would keep one for the whole search,
    # so the timed runs use a warm one (the cold first run, which writes it, is reported apart).
    naive, naive_scores, cold = [], [], None
    work = Path(tempfile.mkdtemp(prefix="search-speed-"))
    lora_cache = args.lora_cache or work / "lora-cache"
    try:

        def mergekit(r: MergeRecipe, i: int) -> Path:
            cfg = work / f"c{i}.yml"
            cfg.write_text(r.to_mergekit_yaml())
            out = work / f"m{i}"
            subprocess.run(
                [
                    *mergekit_yaml_cmd(),
                    str(cfg),
                    str(out),
                    "--copy-tokenizer",
                ]
                + ["--lora-merge-cache", str(lora_cache)]
                + (["--cuda"] if args.device.startswith("cuda") else []),
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env={**os.environ, "TQDM_DISABLE": "1"},
            )
            return out

        if args.naive and not (lora_cache.is_dir() and any(lora_cache.iterdir())):
            cold, out = timed(lambda: mergekit(recipes[-1], 99))
            shutil.rmtree(out)
        for i, r in enumerate(recipes[: args.naive]):
            t0 = time.perf_counter()
            out = mergekit(r, i)
            m = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).to(args.device)
            naive_scores.append(ev.score(m))
            naive.append(time.perf_counter() - t0)
            del m
            shutil.rmtree(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    scores["naive"] = naive_scores
    ref = statistics.median(naive) if naive else None

    if naive:
        rows.append(
            row(
                "1 naive: mergekit-yaml + from_pretrained + Evaluator",
                naive,
                ref,
                "warm --lora-merge-cache"
                + ("" if cold is None else f" (cold first merge {cold:.0f} s)"),
            )
        )
    rows.append(
        row(
            "2 in-memory: MergeSession.merge + to_model",
            mem,
            ref,
            f"merge+load {statistics.median(mem_merge) / statistics.median(floor):.0%} of scoring",
        )
    )
    rows.append(
        row(
            "3 in-place: InPlaceModel (touched modules only)",
            ip_total,
            ref,
            f"apply+restore {statistics.median(ip_apply) / statistics.median(floor):.1%} of scoring",
        )
    )
    rows.append(row("4 floor: scoring alone, model in place", floor, ref))
    affine = statistics.median(ip_total)
    for method, ip_t, ip_a, mem_t, mem_m in extra:
        rows.append(
            row(
                f"3 in-place, {method} candidates (its kernel on the adapted modules)",
                ip_t,
                ref,
                f"apply+restore {statistics.median(ip_a) / statistics.median(floor):.1%} of "
                f"scoring; {statistics.median(ip_t) / affine:.2f}x an affine in-place candidate",
            )
        )
        rows.append(
            row(
                f"2 in-memory, {method} candidates (MergeSession.merge + to_model)",
                mem_t,
                ref,
                f"merge+load {statistics.median(mem_m) / statistics.median(floor):.0%} of scoring",
            )
        )

    for r in rows:
        print("row", json.dumps(r), flush=True, file=sys.stderr)
    if args.workers:
        from hub_merge.search.distributed import RayPool
        from hub_merge.search.worker import WorkerSpec

        spec = WorkerSpec.for_tasks(
            tasks, base=base, base_source=base, folders={a: a for a in adapters}, device=args.device
        )
        del inplace, session, model
        t0 = time.perf_counter()
        with RayPool(spec, workers=args.workers) as pool:
            pool.evaluate_many(recipes[:1] * args.workers)  # every actor loaded and warm
            start = time.perf_counter() - t0
            t1 = time.perf_counter()
            got = pool.evaluate_many(recipes)
            wall = time.perf_counter() - t1
        scores[f"workers={args.workers}"] = got
        per = wall / len(recipes)
        rows.append(
            row(
                f"5 in-place, --workers {args.workers} (local Ray)",
                [per],
                ref,
                f"wall/candidate over the generation; start-up {start:.0f} s not counted",
            )
        )

    worst = 0.0
    for got in scores.values():
        for a, b in zip(got, ip_scores, strict=False):
            worst = max(worst, max(abs(a[t] - b[t]) for t in a))
    if args.json:
        print(json.dumps({"rows": rows, "max_score_diff_vs_in_place": worst}, indent=2))
        return
    print(
        f"{zoo.get('name', 'zoo')}, {len(tasks)} tasks x {args.limit} rows, {len(recipes)} candidates "
        f"({args.naive} naive), device {args.device}, torch threads {torch.get_num_threads()}"
    )
    print("| path | s / candidate | candidates / hour | vs naive | note |")
    print("|---|---:|---:|---:|---|")
    for r in rows:
        vs = "-" if r["vs_naive"] is None else f"{r['vs_naive']:.1f}x"
        print(
            f"| {r['row']} | {r['s_per_candidate']:.2f} | {r['per_hour']:.0f} | {vs} | {r['note']} |"
        )
    print(f"largest score difference from the in-place path: {worst:.2e}")


if __name__ == "__main__":
    main()
