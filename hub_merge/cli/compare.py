"""``hub-merge compare``: every strategy (plus MoE, MoA) on the same inputs, one leaderboard."""

from __future__ import annotations

import json
from typing import Any

import click

from ._hubopts import endpoint_option, token_option
from .search import ManyValues, ManyValuesCommand, parse_json


@click.command(name="compare", cls=ManyValuesCommand)
@click.option("--base", required=True, help="Base model all experts share (Hub ref or folder).")
@click.option("--experts", cls=ManyValues, required=True, help="Experts or LoRA adapters.")
@click.option("--tasks", cls=ManyValues, required=True, help="Task JSONL files (dev + test).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Compare folder.")
@click.option(
    "--strategies",
    default=None,
    help="Comma-separated strategies (default: every registered one), e.g. greedy,evolve,dam.",
)
@click.option(
    "--budget",
    default=None,
    help="Evaluations: N shared evenly between the strategies, or per strategy "
    "(dam=30,evolve=60; others run to their own stop).",
)
@click.option(
    "--settings",
    "settings_json",
    default=None,
    help='Each strategy\'s own settings as JSON, e.g. \'{"evolve": {"population": 8}}\'; '
    "with --moa, MoA's too (default: the reference's sampling, temperature 0.7 and up to 2048 "
    'new tokens), e.g. \'{"moa": {"max_new_tokens": 64}}\'.',
)
@click.option("--seeds", type=int, default=1, show_default=True, help="Seeds per strategy.")
@click.option("--seed", type=int, default=0, show_default=True, help="The first seed.")
@click.option("--moe", is_flag=True, help="Add a MoE row (the experts' MLPs, top-k routed).")
@click.option("--moe-top-k", type=int, default=1, show_default=True, help="Experts per token.")
@click.option("--moa", is_flag=True, help="Add a MoA row (experts propose, base aggregates).")
@click.option(
    "--exact-match/--no-exact-match",
    default=True,
    show_default=True,
    help="Exact match on the test rows for every model row (generation).",
)
@click.option(
    "--metric",
    type=click.Choice(["answer_loss", "exact_match", "choice"]),
    default="answer_loss",
    show_default=True,
)
@click.option("--combine", type=click.Choice(["mean", "harmonic"]), default="mean")
@click.option("--limit", type=int, default=None, help="At most N dev and N test rows per task.")
@click.option("--test-fraction", type=float, default=0.3, show_default=True)
@click.option("--split-seed", type=int, default=0, show_default=True)
@click.option("--test-tasks", cls=ManyValues, help="Test JSONL files, one per task, instead.")
@click.option(
    "--train-tasks",
    cls=ManyValues,
    help="Training JSONL files, one per task: adds the row 'dam + train rows' (DAM's own row "
    "trains on the dev rows, like the searches read).",
)
@click.option("--allow-benchmark-fitness", is_flag=True)
@click.option("--batch-size", default="16", show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--max-memory", default=None, help="Memory for cached merged models (e.g. 3GB).")
@click.option(
    "--workers",
    type=int,
    help="Score candidates on N local Ray workers, shared by every strategy's run (needs "
    "hub-merge[distributed]).",
)
@click.option(
    "--ray-address",
    help="Score on the Ray cluster at this address (host:port or ray://host:port).",
)
@click.option("--resume", is_flag=True, help="Finish an interrupted compare in --out.")
@click.option("--no-progress", is_flag=True, help="Hide progress displays.")
@click.option("--json", "as_json", is_flag=True, help="Print the leaderboard as JSON.")
@endpoint_option
@token_option
def command(
    base: str,
    experts: tuple[str, ...],
    tasks: tuple[str, ...],
    out: str,
    strategies: str | None,
    budget: str | None,
    settings_json: str | None,
    seeds: int,
    seed: int,
    moe: bool,
    moe_top_k: int,
    moa: bool,
    exact_match: bool,
    metric: str,
    combine: str,
    limit: int | None,
    test_fraction: float,
    split_seed: int,
    test_tasks: tuple[str, ...],
    train_tasks: tuple[str, ...],
    allow_benchmark_fitness: bool,
    batch_size: str,
    device: str,
    max_memory: str | None,
    workers: int | None,
    ray_address: str | None,
    resume: bool,
    no_progress: bool,
    as_json: bool,
    endpoint: str | None,
    token: str | None,
) -> None:
    """Run several merge strategies on the same tasks and print one leaderboard.

    Every row shares one dev/test split, one set of baselines (each expert, the uniform
    average, the oracle router) and one score cache in --out; each strategy's run is a
    subfolder. The leaderboard (leaderboard.md, .json, .png in --out) shows test scores, exact
    match, which rows each strategy read and what it cost; the recommended row is chosen on dev
    scores. Publish a row with `hub-merge push OUT --row NAME --repo me/merged`.

    \b
    Examples:
      hub-merge compare --base org/base --experts org/a org/b --tasks a.jsonl b.jsonl \\
          --strategies greedy,evolve,dam --budget 60 --seeds 3 --moe --out cmp
      hub-merge compare ... --out cmp --resume
      hub-merge push cmp --repo me/merged            # the recommended row
    """
    from ..errors import ConfigError
    from ..leaderboard import CompareConfig, compare_strategies, parse_budget, parse_strategies

    settings: Any = parse_json("--settings", settings_json) if settings_json else {}
    if not isinstance(settings, dict) or not all(isinstance(v, dict) for v in settings.values()):
        raise ConfigError(
            '--settings takes {"strategy": {"setting": value}}; got ' + repr(settings)
        )
    if batch_size != "auto" and (not batch_size.isdigit() or int(batch_size) < 1):
        raise ConfigError(f"--batch-size takes a positive number or auto; got {batch_size!r}.")
    if not test_tasks and not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"--test-fraction must be between 0 and 1; got {test_fraction}.")
    config = CompareConfig(
        base=base,
        experts=list(experts),
        tasks=list(tasks),
        out=out,
        strategies=parse_strategies(strategies),
        budget=parse_budget(budget),
        settings=settings,
        seeds=seeds,
        seed=seed,
        moe=moe,
        moa=moa,
        moe_top_k=moe_top_k,
        exact_match=exact_match,
        metric=metric,
        combine=combine,
        limit=limit,
        test_fraction=test_fraction,
        split_seed=split_seed,
        test_tasks=list(test_tasks),
        train_tasks=list(train_tasks),
        allow_benchmark_fitness=allow_benchmark_fitness,
        batch_size=batch_size if batch_size == "auto" else int(batch_size),
        device=device,
        max_memory=max_memory,
        workers=workers,
        ray_address=ray_address,
        resume=resume,
        progress=not no_progress and not as_json,
        endpoint=endpoint,
        token=token,
    )
    try:
        board = compare_strategies(config)
    except KeyboardInterrupt:
        click.echo(
            f"Interrupted; the finished rows are kept in {out}. Finish with the same command "
            "and --resume.",
            err=True,
        )
        raise click.exceptions.Exit(130) from None
    if as_json:
        click.echo(json.dumps(board.to_dict(), indent=2))
        return
    click.echo(board.text())
    rec = board.recommended()
    click.echo(
        f"Scored now: {board.evaluations_now}. Leaderboard: {out}/leaderboard.md"
        + (f"; publish the recommended row: hub-merge push {out} --repo ME/NAME" if rec else ".")
    )
