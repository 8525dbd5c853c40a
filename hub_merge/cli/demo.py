"""``hub-merge demo``: discover, pull, kinship, greedy search, card and push on a local Hub."""

from __future__ import annotations

import json
from pathlib import Path

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
    "--strategy",
    default="greedy",
    show_default=True,
    help="Search strategy: greedy (kinship-guided top-k), evolve (CMA-ES), swarm...",
)
@click.option("--generations", type=int, default=None, help="Greedy generations (default 2).")
@click.option(
    "--budget", type=int, default=None, help="Evaluations of the search (evolve default: 40)."
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
    strategy: str,
    generations: int | None,
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
    pulls them, measures their kinship, runs the kinship-guided greedy search, writes the card,
    pushes the winner, pulls it back and lets it answer. A second run reuses everything.

    \b
    Examples:
      hub-merge demo --quick          # tiny models, under a minute
      hub-merge demo                  # SmolLM2-135M (builds its zoo once: minutes)
      hub-merge demo --out /tmp/demo --device cuda
      hub-merge demo --quick --strategy evolve --budget 40
    """
    from rich.console import Console

    from ..demo import DemoConfig, row_label, run_demo, summary_table
    from ..search import get_strategy

    get_strategy(strategy)  # an unknown strategy: one line, before the Hub starts
    from ..progress import is_quiet, set_quiet

    quiet = quiet or is_quiet()
    if quiet or as_json:
        set_quiet(True)
    console = Console(stderr=as_json, quiet=as_json, soft_wrap=True)
    config = DemoConfig(
        quick=quick,
        out=out,
        repo_id=repo_id,
        strategy=strategy,
        generations=generations,
        budget=budget,
        limit=limit,
        device=device,
        progress=not (no_progress or as_json or quiet),
    )
    result = run_demo(config, echo=(lambda *_a, **_k: None) if quiet else console.print)
    if as_json:
        cmp = result.comparison()
        click.echo(
            json.dumps(
                {
                    "zoo": result.zoo,
                    "base": result.base,
                    "experts": result.experts,
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
                    "kinship": result.kinship.to_dict(),
                    "push": result.published.to_json(),
                    "listed_as_merge": result.listed_as_merge,
                    "generated": result.generated,
                    "resumed": result.resumed,
                    "out": str(result.out),
                    "seconds": round(result.seconds, 1),
                    "peak_rss_mb": round(result.peak_rss / 2**20),
                },
                indent=2,
            )
        )
        return
    console.print(summary_table(result))
    if quiet:  # only the result: the comparison and where the merge went
        console.print(f"Published {result.published.push.repo_id} at {result.published.url}")
        return
    for task, (prompt, want, got) in result.generated.items():
        console.print(f"   {task}: {prompt!r} -> {got!r} (expected {want!r})")
    run = result.out / "run"
    console.print(
        f"\n[bold]Done in {result.seconds:.0f} s[/bold] (peak RSS "
        f"{result.peak_rss / 2**30:.2f} GiB). Published "
        f"{result.published.push.repo_id} at {result.published.url}"
        + (" (listed on its parents' model tree as a merge)." if result.listed_as_merge else ".")
    )
    console.print(
        "Where to look:\n"
        f"   card        {result.published.card.readme}\n"
        f"   plots       {out / 'kinship.png'}, {run / 'fitness.png'}, {run / 'family_tree.png'}\n"
        f"   lineage     {run / 'family_tree.json'}\n"
        f"   the Hub     hub-merge hub serve --data {result.out / 'hub'}  (then HF_ENDPOINT=...)"
    )
