"""``hub-merge demo``: discover, pull, kinship, the leaderboard, card and push on a local Hub."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click


@click.command("demo")
@click.option("--quick", is_flag=True, help="Use the tiny zoo: under a minute once it is built.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("hub-merge-demo"),
    show_default=True,
    help="Folder for the local Hub's data, the download cache, the run and the plots.",
)
@click.option(
    "--repo", "repo_id", default=None, help="Repo to publish to (default: demo/<zoo>-merged)."
)
@click.option(
    "--strategies",
    default="greedy,dam",
    show_default=True,
    help="The leaderboard's strategies, comma-separated (greedy, evolve, swarm, dam). One name "
    "(--strategies greedy) keeps the shorter path: that search alone, its winner published.",
)
@click.option(
    "--strategy",
    default=None,
    hidden=True,
    help="One strategy: the same as --strategies NAME (kept for earlier scripts).",
)
@click.option("--generations", type=int, default=None, help="Greedy generations (default 2).")
@click.option(
    "--dam-steps", type=int, default=None, help="DAM's training steps (default 30; 5 with --quick)."
)
@click.option(
    "--budget",
    type=int,
    default=None,
    help="Evaluations per search, shared between the strategies (default: each one's own stop; "
    "evolve: 40).",
)
@click.option(
    "--limit", type=int, default=None, help="Dev examples per task (default 16 quick, 32)."
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1...")
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
@click.option("--quiet", "-q", is_flag=True, help="Print only the result (no steps, no bars).")
@click.option("--json", "as_json", is_flag=True, help="Print only a JSON summary at the end.")
def command(
    quick: bool,
    out: Path,
    repo_id: str | None,
    strategies: str,
    strategy: str | None,
    generations: int | None,
    dam_steps: int | None,
    budget: int | None,
    limit: int | None,
    device: str,
    no_progress: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Run hub-merge end to end on an embedded local Hub, as a user would on the real one.

    Seeds a local Hub with a base model and its experts (SmolLM2-135M and four LoRA experts,
    or a tiny Llama zoo with --quick), then discovers the experts through the Hub's model tree,
    pulls them and measures their kinship. It then runs the kinship-guided greedy search and
    DAM on the same dev rows, prints the leaderboard against each expert, the uniform average
    and the oracle router, publishes the row best on the dev rows with the leaderboard on its
    card, pulls it back and counts the held-out test prompts it answers exactly. A second run
    reuses everything.

    \b
    Examples:
      hub-merge demo --quick          # tiny models, under a minute
      hub-merge demo                  # SmolLM2-135M (builds its zoo once: minutes)
      hub-merge demo --strategies greedy   # the shorter path: greedy alone
      hub-merge demo --out /tmp/demo --device cuda
      hub-merge demo --quick --strategies evolve --budget 40
    """
    from rich.console import Console

    from ..demo import DemoConfig, final_table, row_label, run_demo
    from ..demo_board import board_rows_json
    from ..errors import ConfigError
    from ..leaderboard import parse_strategies
    from ..search import get_strategy

    names = [strategy] if strategy else parse_strategies(strategies)
    if not names:
        raise ConfigError("--strategies takes one or more names, e.g. greedy,dam.")
    for name in names:
        get_strategy(name)  # an unknown strategy: one line, before the Hub starts
    if dam_steps is not None and dam_steps < 1:
        raise ConfigError(f"--dam-steps must be at least 1; got {dam_steps}.")
    from ..progress import is_quiet, set_quiet

    quiet = quiet or is_quiet()
    if quiet or as_json:
        set_quiet(True)
    console = Console(stderr=as_json, quiet=as_json, soft_wrap=True)
    config = DemoConfig(
        quick=quick,
        out=out,
        repo_id=repo_id,
        strategies=tuple(names),
        generations=generations,
        dam_steps=dam_steps,
        budget=budget,
        limit=limit,
        device=device,
        progress=not (no_progress or as_json or quiet),
    )
    result = run_demo(config, echo=(lambda *_a, **_k: None) if quiet else console.print)
    if as_json:
        click.echo(json.dumps(_summary(result, row_label, board_rows_json), indent=2))
        return
    console.print(final_table(result))
    if quiet:  # only the result: the final table and where the merge went
        console.print(f"Published {result.published.push.repo_id} at {result.published.url}")
        return
    if result.answers is not None:
        console.print(
            f"{result.published.push.repo_id}, pulled back from the Hub, "
            f"{result.answers.sentence()}. Its first answer per task:"
        )
    for task, (prompt, want, got) in result.generated.items():
        console.print(f"   {task}: {prompt!r} -> {got!r} (expected {want!r})")
    run = result.out / ("compare" if result.board is not None else "run")
    row = f" (row {result.row}, chosen on the dev rows)" if result.row else ""
    console.print(
        f"\n[bold]Done in {result.seconds:.0f} s[/bold] (peak RSS "
        f"{result.peak_rss / 2**30:.2f} GiB). Published "
        f"{result.published.push.repo_id}{row} at {result.published.url}"
        + (" (listed on its parents' model tree as a merge)." if result.listed_as_merge else ".")
    )
    if result.memory:
        from rich.table import Table

        head, *rows = _memory_table(result.memory)
        table = Table(*head, title="Resident memory (RSS) at the end of each step")
        for cells in rows:
            table.add_row(*cells)
        console.print(table)
    plots = f"{out / 'kinship.png'}, {run / 'fitness.png'}, {run / 'family_tree.png'}"
    lineage = f"{run / 'family_tree.json'}"
    if result.board is not None:
        plots = f"{out / 'kinship.png'}, {run / 'leaderboard.png'}"
        lineage = f"{run / 'leaderboard.md'} (each strategy's run in a subfolder)"
    console.print(
        "Where to look:\n"
        f"   card        {result.published.card.readme}\n"
        f"   plots       {plots}\n"
        f"   {'leaderboard' if result.board is not None else 'lineage    '} {lineage}\n"
        f"   the Hub     hub-merge hub serve --data {result.out / 'hub'}  (then HF_ENDPOINT=...)"
    )


def _memory_table(steps: Any) -> list[list[str]]:
    gib = 2**30
    out = [["step", "RSS now GiB", "step peak GiB", "peak so far GiB", "s"]]
    for s in steps:
        out.append(
            [s.step, *(f"{v / gib:.2f}" for v in (s.now, s.step_peak, s.peak)), f"{s.seconds:.0f}"]
        )
    return out


def _summary(result: Any, row_label: Any, board_rows: Any) -> dict[str, Any]:
    """The ``--json`` summary: the same keys on both paths, the leaderboard's when it ran."""
    common = {
        "zoo": result.zoo,
        "base": result.base,
        "experts": result.experts,
        "kinship": result.kinship.to_dict(),
        "push": result.published.to_json(),
        "listed_as_merge": result.listed_as_merge,
        "generated": result.generated,
        "resumed": result.resumed,
        "out": str(result.out),
        "seconds": round(result.seconds, 1),
        "peak_rss_mb": round(result.peak_rss / 2**20),
        "memory": [s.to_json() for s in result.memory],
    }
    if result.board is not None:
        board = result.board
        return {
            **common,
            "strategies": [r.name for r in board.rows if r.kind == "strategy"],
            "row": result.row,
            "winner": result.node,
            "recommended": board.to_dict()["recommended"],
            "evaluations": board.evaluations_now,
            "comparison": board_rows(board),
            "answers": result.answers.to_json() if result.answers else None,
            "leaderboard": board.to_dict(),
        }
    cmp = result.comparison()
    return {
        **common,
        "strategy": result.search.strategy,
        "winner": result.search.winner,
        "evaluations": result.search.evaluations,
        "comparison": [
            {
                "model": row_label(row),
                "role": row.role,
                "scores": dict(row.scores(cmp.split)),
                "combined": row.combined(cmp.split),
            }
            for row in cmp.shown()
        ],
    }
