"""``hub-merge moa``: mixture-of-agents over the experts, scored by exact match and loss, with cost."""

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
    help="Task .jsonl files whose rows are answered and scored (exact match of the extracted "
    "answer, and the aggregator's answer-token loss).",
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
@click.option(
    "--max-new-tokens",
    type=int,
    default=2048,
    show_default=True,
    help="New tokens per model call (the reference's 2048); 0: the longest answer + 2 (cheap).",
)
@click.option(
    "--temperature",
    type=float,
    default=0.7,
    show_default=True,
    help="Sampling temperature of every call (the reference's 0.7); 0: greedy.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the sampling.")
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
    max_new_tokens: int,
    temperature: float,
    seed: int,
    device: str,
    out: Path | None,
    as_json: bool,
    endpoint: str | None,
    token: str | None,
) -> None:
    """Answer each task row with the experts, then aggregate their answers (Wang et al. 2024).

    As the reference (togethercomputer/MoA): later rounds and the aggregator get the previous
    answers in the system message, every call samples at temperature 0.7 with up to 2048 new
    tokens. Reports, per task, exact match of the answer extracted from the final text (after
    "Answer:", else its first line), the strict whole-text match, and the aggregator's
    answer-token loss given the proposals, with the cost per query (model calls, tokens).

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
        settings=MoaSettings(
            layers=layers,
            max_new_tokens=max_new_tokens or None,
            temperature=temperature,
            seed=seed,
        ),
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
        f"({scores}), aggregator answer loss {report.mean_answer_loss:.3f}; "
        f"{report.calls_per_query:.1f} model calls and "
        f"{report.generated_tokens_per_query:.1f} generated tokens per query."
    )
