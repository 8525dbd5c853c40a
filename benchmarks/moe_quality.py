"""MoE (top-1, top-2) and MoA against the oracle router and the uniform merge, on TEST rows.

Not a test: prints a table (and writes results.json) with, per row, the mean answer-token loss
on the test rows (lower is better) and its ratio to the oracle router measured in the same run,
exact match on a subset of the test rows, router accuracy, and the inference cost beside it:
parameters active per token, model calls and generated tokens per query.

Rows: oracle router (each task answered by its own expert: one dense model per task), uniform
average (base + mean of the experts' deltas: one dense model), MoE top-1 and top-2 (router
``hidden``, shared weights from the base), the same with shared = average of deltas, the
mergekit-style ``hidden-mean`` router, and MoA (experts propose, the base aggregates).

Test rows: the search's own split (``hub_merge.splits.split_task``: 30% of each task's rows by a
hash of seed and prompt), so these rows are the ones every search row is tested on; the positive prompts of the MoE
router come from the zoo's TRAIN files, so no test row is seen when the MoE is built.

    python benchmarks/moe_quality.py --zoo smol --test-limit 40 --em-limit 12
    python benchmarks/moe_quality.py --zoo tiny --test-limit 16 --em-limit 4   # smoke run
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any


def split_test(task: Any, fraction: float = 0.3, seed: int = 0) -> Any:
    """The task's test rows, by the search's own split (``hub_merge.splits.split_task``)."""
    from hub_merge.splits import split_task

    return split_task(task, fraction, seed)[1]


def _write_jsonl(task: Any, path: Path) -> Path:
    path.write_text(
        "".join(json.dumps({"prompt": e.prompt, "answer": e.answer}) + "\n" for e in task.examples)
    )
    return path


def _dense_params(folder: Path) -> int:
    from hub_merge.tensors import CheckpointReader

    r = CheckpointReader(folder)
    return sum(r.numel(n) for n in r.names)


def _expert_state(
    base: Path, adapters: list[Path], weights: list[float], *, mlp_only: bool = False
) -> dict[str, Any]:
    """base + sum_i w_i * delta_i, one tensor at a time (the oracle's expert, or the average).

    ``mlp_only``: only the MLP deltas, i.e. what a perfectly routed top-1 MoE with the base's
    attention computes for that expert's tokens.
    """
    from hub_merge.merge.inputs import AdapterSource, CheckpointSource

    b = CheckpointSource(base)
    srcs = [AdapterSource(a, b) for a in adapters]
    state = {}
    for name in b.names:
        t = b.get(name).float()
        if mlp_only and ".mlp." not in name:
            state[name] = t
            continue
        for s, w in zip(srcs, weights, strict=True):
            d = s.adapter.delta(name, t)
            if d is not None:
                t = t + w * d
        state[name] = t
    return state


def _dense_model(base: Path, state: dict[str, Any]) -> Any:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base), dtype=torch.float32)
    model.load_state_dict(state, strict=False)
    model.tie_weights()
    return model.eval()


def _evaluators(tokenizer: Any, tests: list[Any], em_limit: int) -> tuple[Any, Any]:
    from hub_merge.evaluate import Evaluator

    loss = Evaluator(tests, tokenizer, metric="answer_loss", batch_size=16)
    em = Evaluator(tests, tokenizer, metric="exact_match", batch_size=16, limit=em_limit)
    return loss, em


def moe_rows(
    zoo: Any,
    *,
    out: Path,
    test_limit: int | None = None,
    em_limit: int = 12,
    device: str = "cpu",
    moa_layers: int = 1,
    variants: tuple[str, ...] = (
        "oracle",
        "uniform",
        "top1",
        "top2",
        "top2-avg",
        "top2-mergekit",
        "moa",
    ),
) -> list[dict[str, Any]]:
    """Every row of the table, each a dict with test scores and inference cost."""
    from transformers import AutoTokenizer

    from hub_merge.evaluate import load_tasks
    from hub_merge.moa import MoaSettings, ModelPool, run_moa
    from hub_merge.moe import ExpertSpec, MoeSettings, build_moe

    experts = zoo.adapters or zoo.experts
    names = sorted(n for n in experts if n in zoo.tasks)
    tests = [split_test(t).head(test_limit) for t in load_tasks([zoo.tasks[n] for n in names])]
    out.mkdir(parents=True, exist_ok=True)
    test_files = [_write_jsonl(t, out / f"test-{t.name}.jsonl") for t in tests]
    tok = AutoTokenizer.from_pretrained(zoo.base)
    loss_ev, em_ev = _evaluators(tok, tests, em_limit)
    dense = _dense_params(Path(zoo.base))
    rows: list[dict[str, Any]] = []

    def row(title: str, loss: dict[str, float], em: dict[str, float] | None, **cost: Any) -> None:
        r = {"row": title, "test_loss": loss, "mean_loss": sum(loss.values()) / len(loss)}
        if em is not None:
            r["exact_match"] = sum(em.values()) / len(em)
        r.update(cost)
        rows.append(r)
        print(f"done: {title}: {json.dumps(r)}", flush=True)  # a killed run keeps its rows

    if "oracle" in variants:  # each task scored by its own expert alone
        t0 = time.perf_counter()
        loss, em = {}, {}
        for k, task in zip(names, tests, strict=True):
            model = _dense_model(zoo.base, _expert_state(zoo.base, [experts[k]], [1.0]))
            one_l, one_e = _evaluators(tok, [task], em_limit)
            loss.update(one_l.score(model))
            em.update(one_e.score(model))
        row("oracle router (own expert per task)", loss, em, active_params=dense,
            calls_per_query=1, seconds=time.perf_counter() - t0)  # fmt: skip

    if "mlp-oracle" in variants:  # the MoE's ceiling: perfect routing, the base's attention
        t0 = time.perf_counter()
        loss, em = {}, {}
        for k, task in zip(names, tests, strict=True):
            state = _expert_state(zoo.base, [experts[k]], [1.0], mlp_only=True)
            one_l, one_e = _evaluators(tok, [task], em_limit)
            model = _dense_model(zoo.base, state)
            loss.update(one_l.score(model))
            em.update(one_e.score(model))
        row("oracle routing of MLPs only (base attention)", loss, em, active_params=dense,
            calls_per_query=1, seconds=time.perf_counter() - t0)  # fmt: skip

    n = len(names)
    if "uniform" in variants:
        t0 = time.perf_counter()
        state = _expert_state(zoo.base, [experts[k] for k in names], [1 / n] * n)
        model = _dense_model(zoo.base, state)
        row("uniform average", loss_ev.score(model), em_ev.score(model), active_params=dense,
            calls_per_query=1, seconds=time.perf_counter() - t0)  # fmt: skip
        del model

    moe_variants = {
        "top1": ("MoE top-1 (router hidden)", MoeSettings(top_k=1)),
        "top2": ("MoE top-2 (router hidden)", MoeSettings(top_k=2)),
        "top2-avg": ("MoE top-2, shared = base + mean delta", MoeSettings(top_k=2, shared="average")),
        "top2-mergekit": ("MoE top-2, router hidden-mean (mergekit)", MoeSettings(router="hidden-mean")),
        "top1-avg": ("MoE top-1, shared = base + mean delta", MoeSettings(top_k=1, shared="average")),
    }  # fmt: skip
    from transformers import AutoModelForCausalLM

    for key in variants:
        if key not in moe_variants:
            continue
        title, settings = moe_variants[key]
        t0 = time.perf_counter()
        folder = out / f"moe-{key}"
        res = build_moe(
            zoo.base,
            [ExpertSpec(experts[k], zoo.train[k], name=k) for k in names],
            folder,
            settings,
            test_rows=test_files,
            device=device,
            overwrite=True,
        )
        built = time.perf_counter() - t0
        model = AutoModelForCausalLM.from_pretrained(folder).eval()
        p = res.manifest["parameters"]
        row(title, loss_ev.score(model), em_ev.score(model), active_params=p["active"],
            total_params=p["total"], calls_per_query=1,
            router_accuracy_test=res.manifest["routing"]["test rows"]["mean"],
            router_accuracy_per_layer=res.manifest["routing"]["test rows"]["per_layer"],
            build_seconds=built, seconds=time.perf_counter() - t0)  # fmt: skip
        del model
        for f in folder.glob("*.safetensors"):
            f.unlink()  # 1-2 GB each; the card and hub_merge.json stay for the record

    if "moa" in variants:
        t0 = time.perf_counter()
        pool = ModelPool(Path(zoo.base), {k: Path(experts[k]) for k in names}, device)
        em_tests = [t.head(em_limit) for t in tests]
        rep = run_moa(pool, em_tests, names, "base", MoaSettings(layers=moa_layers))
        rows.append(
            {
                "row": f"MoA ({n} proposers x {moa_layers} layer + base aggregator)",
                "exact_match": rep.mean_exact_match,
                "exact_match_per_task": rep.exact_match,
                "exact_match_strict": rep.exact_match_strict,
                # the aggregator's answer-token loss given the proposals, on the same (EM) rows
                "aggregator_answer_loss": rep.mean_answer_loss,
                "aggregator_answer_loss_per_task": rep.answer_loss,
                "active_params": dense,
                "calls_per_query": rep.calls_per_query,
                "generated_tokens_per_query": rep.generated_tokens_per_query,
                "seconds": time.perf_counter() - t0,
                "samples": rep.samples,
            }
        )
        print(
            f"done: MoA: exact match {rep.mean_exact_match:.3f}, aggregator answer loss "
            f"{rep.mean_answer_loss:.4f} (on the {rep.queries} exact-match rows)",
            flush=True,
        )
    oracle = next((r["mean_loss"] for r in rows if r["row"].startswith("oracle router")), None)
    for r in rows:
        if "mean_loss" in r and oracle:
            r["vs_oracle"] = r["mean_loss"] / oracle
    return rows


def _print(rows: list[dict[str, Any]], tasks: list[str]) -> None:
    head = ["row", "mean test loss", "vs oracle", *tasks, "EM", "router acc", "active params",
            "calls/query", "gen tok/query", "s"]  # fmt: skip
    print("| " + " | ".join(head) + " |")
    print("| --- |" + " ---: |" * (len(head) - 1))
    for r in rows:
        loss = r.get("test_loss", {})
        cells = [
            r["row"],
            f"{r['mean_loss']:.4f}" if "mean_loss" in r else "-",
            f"{r['vs_oracle']:.2f}" if "vs_oracle" in r else "-",
            *[f"{loss[t]:.3f}" if t in loss else "-" for t in tasks],
            f"{r['exact_match']:.3f}" if "exact_match" in r else "-",
            f"{r['router_accuracy_test']:.3f}" if "router_accuracy_test" in r else "-",
            f"{r['active_params'] / 1e6:.1f}M",
            f"{r['calls_per_query']:g}",
            f"{r['generated_tokens_per_query']:.1f}" if "generated_tokens_per_query" in r else "-",
            f"{r['seconds']:.0f}",
        ]
        print("| " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--zoo", choices=["smol", "tiny"], default="smol")
    parser.add_argument("--test-limit", type=int, default=None, help="test rows per task")
    parser.add_argument("--em-limit", type=int, default=12, help="rows per task for exact match")
    parser.add_argument("--moa-layers", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--rows",
        default="oracle,uniform,top1,top2,top2-avg,top2-mergekit,moa",
        help="also: mlp-oracle (perfect routing, base attention), top1-avg",
    )
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    from hub_merge import zoo as zoos

    zoo = zoos.build_smol_zoo() if args.zoo == "smol" else zoos.build_tiny_zoo()
    out = Path(args.out or tempfile.mkdtemp(prefix="moe-quality-"))
    rows = moe_rows(
        zoo,
        out=out,
        test_limit=args.test_limit,
        em_limit=args.em_limit,
        device=args.device,
        moa_layers=args.moa_layers,
        variants=tuple(k.strip() for k in args.rows.split(",") if k.strip()),
    )
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    _print(rows, sorted(n for n in (zoo.adapters or zoo.experts) if n in zoo.tasks))
    print(f"results: {out / 'results.json'}")


if __name__ == "__main__":
    main()
