"""``hub-merge moa``: mixture-of-agents over the experts, scored by exact match with its cost."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import ConfigError
from ._hubopts import endpoint_option, token_option


@click.command("moa")
@click.option("--base", required=True, help="Base model: org/name[@rev] or a folder.")
@click.option(
    "--expert", "experts", multiple=True, required=True, help="An expert (proposer); repeat."
)
@click.option("--name", "names", multiple=True, help="Expert names (default: repo/folder names).")
@click.option(
    "--tasks",
    "task_files",
    multiple=True,
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Task .jsonl files whose rows are answered and scored by exact match.",
)
@click.option("--proposers", default=None, help="Comma-separated expert names (default: all).")
@click.option(
    "--aggregator",
    default="base",
    show_default=True,
    help="'base', an expert's name, or another model ref that writes the final answer.",
)
@click.option("--layers", type=int, default=1, show_default=True, help="Proposer rounds.")
@click.option("--limit", type=int, default=None, help="Score only the first N rows per task.")
@click.option("--max-new-tokens", type=int, default=None, help="Default: longest answer + 2.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the report JSON."
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@endpoint_option
@token_option
def command(
    base: str,
    experts: tuple[str, ...],
    names: tuple[str, ...],
    task_files: tuple[str, ...],
    proposers: str | None,
    aggregator: str,
    layers: int,
    limit: int | None,
    max_new_tokens: int | None,
    device: str,
    out: Path | None,
    as_json: bool,
    endpoint: str | None,
    token: str | None,
) -> None:
    """Answer each task row with the experts, then aggregate their answers (Wang et al. 2024).

    Reports exact match per task with the cost per query (model calls, generated tokens).

    \b
    Example:
      hub-merge moa --base org/base --expert org/a --expert org/b --tasks a.jsonl --tasks b.jsonl
      hub-merge moa --base ./base --expert ./a --expert ./b --tasks t.jsonl --layers 2 \\
          --aggregator a --limit 20 --out moa.json
    """
    from ..evaluate import load_tasks
    from ..moa import MoaSettings, moa

    if names and len(names) != len(experts):
        raise ConfigError(f"Give no --name or one per --expert ({len(experts)}).")
    labels = list(names) or [e.rstrip("/").split("/")[-1].split("@")[0] for e in experts]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"Expert names must be unique ({labels}); set them with --name.")
    tasks = load_tasks(task_files, limit=limit)
    chosen = [p.strip() for p in proposers.split(",") if p.strip()] if proposers else None
    report = moa(
        base,
        dict(zip(labels, experts, strict=True)),
        tasks,
        proposers=chosen,
        aggregator=aggregator,
        settings=MoaSettings(layers=layers, max_new_tokens=max_new_tokens),
        device=device,
        endpoint=endpoint,
        token=token,
    )
    data = report.to_json()
    if out is not None:
        from ..atomic import atomic_write_json

        atomic_write_json(out, data, indent=2)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    scores = ", ".join(f"{t} {v:.3f}" for t, v in report.exact_match.items())
    click.echo(
        f"MoA ({len(report.proposers)} proposers x {layers} layer(s) + aggregator "
        f"{report.aggregator}) on {report.queries} rows: exact match {report.mean_exact_match:.3f} "
        f"({scores}); {report.calls_per_query:.1f} model calls and "
        f"{report.generated_tokens_per_query:.1f} generated tokens per query."
    )
