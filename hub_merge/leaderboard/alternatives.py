"""The two alternatives to one merged model, as leaderboard rows: MoE and MoA.

- **MoE** (``hub_merge.moe``): the experts' MLPs as one Mixtral model, top-k routed. Its router
  is fitted on each expert's own task's DEV rows (the rows every search reads; the task-to-expert
  mapping is the one DAM uses), and it is scored by the search's evaluator on the same dev and
  test rows as every other row. Its cost is its parameters, and the ones active per token.
- **MoA** (``hub_merge.moa``): every expert answers, the base aggregates. Its row has exact
  match on the test rows, the aggregator's answer-token loss given the proposals as its loss
  (test rows only: MoA reads no dev rows), and its model calls per query.

Both take the compare's models, split and tokenizer; each writes only under its own folder.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .board import BoardRow, SeedResult


def _expert_rows(cmp: Any) -> tuple[dict[str, Path], dict[str, list[Any]]]:
    """Expert name -> folder, and expert name -> its task's dev rows (DAM's matching rule)."""
    from ..dam import assign_tasks

    models = cmp.engine.models
    folders = {e.name: Path(p.path) for e, p in zip(models.experts, models.pulled, strict=True)}
    rows = {t.name: list(t.examples) for t in cmp.split.dev}
    return folders, assign_tasks(list(folders), rows)


def moe_row(cmp: Any, folder: Path) -> BoardRow:
    """Build the MoE (top-``moe_top_k``) into ``folder/model`` and score it like every row."""
    from transformers import AutoModelForCausalLM

    from ..evaluate import Evaluator
    from ..moe import ExpertSpec, MoeSettings, build_moe

    t0 = time.perf_counter()
    folders, prompts = _expert_rows(cmp)
    settings = MoeSettings(top_k=min(cmp.config.moe_top_k, len(folders)))
    specs = [
        ExpertSpec(folders[n], [ex.prompt for ex in prompts[n]][: settings.prompt_limit], name=n)
        for n in folders
    ]
    out = build_moe(
        cmp.engine.models.base.path,
        specs,
        folder / "model",
        settings,
        device=cmp.config.device,
        overwrite=True,
        progress=cmp.config.progress,
    )
    device = cmp.engine.session.device
    model = AutoModelForCausalLM.from_pretrained(folder / "model").to(device).eval()
    run = cmp.checked[cmp.runs[0].folder]
    kw = {"metric": run.metric, "batch_size": cmp.config.batch_size, "device": device}
    dev = Evaluator(cmp.split.dev, cmp.engine.tokenizer, **kw).score(model)
    test = Evaluator(cmp.split.test, cmp.engine.tokenizer, **kw).score(model)
    em = cmp.exact_match("moe/model", lambda: model)
    p = out.manifest["parameters"]
    return BoardRow(
        name="moe",
        kind="moe",
        label=f"MoE top-{settings.top_k}",
        seeds=[
            SeedResult(
                seed=None,
                dev=dev,
                test=test,
                dev_fitness=cmp.fitness(dev),
                test_fitness=cmp.fitness(test),
                exact_match=em,
                evaluations=1,
                wall_s=round(time.perf_counter() - t0, 3),
                model="moe/model",
            )
        ],
        dev_rows=sum(len(s.prompts) for s in specs),
        task_map=True,
        params=int(p["total"]),
        active_params=int(p["active"]),
        calls_per_query=1,
        note="router fitted on each expert's task's dev rows",
    )


def moa_row(cmp: Any, folder: Path) -> BoardRow:
    """Run MoA (every expert proposes, the base aggregates) on the test rows: EM and loss."""
    from ..moa import ModelPool, run_moa

    t0 = time.perf_counter()
    folders, _ = _expert_rows(cmp)
    pool = ModelPool(Path(cmp.engine.models.base.path), folders, cmp.config.device)
    settings = cmp.config.moa_settings()
    report = run_moa(pool, cmp.split.test, list(folders), "base", settings)
    folder.mkdir(parents=True, exist_ok=True)
    from ..atomic import atomic_write_json

    atomic_write_json(folder / "moa.json", report.to_json())
    # its loss column: the aggregator's answer-token loss given the proposals, on the same test
    # rows as every other row (only when the compare is scored by that loss)
    metric = cmp.checked[cmp.runs[0].folder].metric
    test = dict(report.answer_loss) if metric == "answer_loss" and report.answer_loss else {}
    return BoardRow(
        name="moa",
        kind="moa",
        label="MoA (experts propose, base aggregates)",
        seeds=[
            SeedResult(
                seed=None,
                dev={},
                test=test,
                dev_fitness=None,
                test_fitness=cmp.fitness(test) if test else None,
                exact_match=dict(report.exact_match),
                evaluations=0,
                wall_s=round(time.perf_counter() - t0, 3),
            )
        ],
        calls_per_query=float(report.calls_per_query),
        note=f"{report.generated_tokens_per_query:.1f} generated tokens per query; sampling at "
        f"temperature {settings.temperature:g}, at most "
        f"{settings.max_new_tokens or 'the longest answer + 2'} new tokens",
    )
