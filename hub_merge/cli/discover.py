"""``hub-merge discover``: list fine-tunes, adapters and merges of a base from the Hub's model tree."""

from __future__ import annotations

import json

import click

from ._hubopts import endpoint_option, token_option


def _human(size: int | None) -> str:
    if size is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return "?"  # pragma: no cover


@click.command("discover")
@click.argument("base")
@click.option(
    "--relation",
    "relations",
    multiple=True,
    type=click.Choice(["finetune", "adapter", "merge", "quantized"]),
    help="Which children of BASE to list (repeatable). Default: finetune, adapter, merge.",
)
@click.option(
    "--limit",
    default=20,
    show_default=True,
    type=click.IntRange(min=1),
    help="At most this many candidates.",
)
@click.option(
    "--sort",
    default="downloads",
    show_default=True,
    type=click.Choice(["downloads", "likes", "created_at", "last_modified", "trending_score"]),
)
@click.option(
    "--license",
    "licenses",
    multiple=True,
    help="Keep only these licenses (repeatable), e.g. apache-2.0.",
)
@click.option("--max-size", help="Drop models whose weights are larger, e.g. 2GB or 500MB.")
@click.option("--safetensors-only", is_flag=True, help="Drop models without safetensors weights.")
@click.option("--json", "as_json", is_flag=True, help="Print the candidates as JSON.")
@endpoint_option
@token_option
def command(
    base, relations, limit, sort, licenses, max_size, safetensors_only, as_json, endpoint, token
) -> None:
    """Candidates derived from BASE on the Hub (its model tree), most downloaded first.

    \b
    Examples:
      hub-merge discover HuggingFaceTB/SmolLM2-135M
      hub-merge discover org/base --relation adapter --license apache-2.0 --max-size 1GB --json
    """
    from ..hub import discover, parse_size

    found = discover(
        base,
        tuple(relations) or ("finetune", "adapter", "merge"),
        limit=limit,
        sort=sort,
        license=list(licenses) or None,
        max_size=parse_size(max_size),
        safetensors_only=safetensors_only,
        endpoint=endpoint,
        token=token,
    )
    if as_json:
        click.echo(json.dumps([c.to_json() for c in found], indent=2))
        return
    if not found:
        click.echo(f"No candidates derived from {base} matched.")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("model", "relation", "downloads", "likes", "license", "safetensors", "size")
    for c in found:
        st = "?" if c.has_safetensors is None else ("yes" if c.has_safetensors else "no")
        table.add_row(
            c.id,
            c.relation,
            str(c.downloads or 0),
            str(c.likes or 0),
            c.license or "",
            st,
            _human(c.size),
        )
    Console().print(table)
