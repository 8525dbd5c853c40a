"""``hub-merge card``: write a run's model card (README.md + hub_merge.json) to read before pushing."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("card")
@click.argument("run", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--node", "node_id", default=None, help="Node to describe (default: the winner).")
@click.option(
    "--license",
    "license_",
    default=None,
    help="License of the merge; required when the parents' licenses conflict or are unknown.",
)
@click.option(
    "--repo", "repo_id", default=None, help="Hub repo it will be pushed to (title, usage snippet)."
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder to write into (default: RUN/winner/ for the winner, else RUN/card/).",
)
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
def command(
    run: Path,
    node_id: str | None,
    license_: str | None,
    repo_id: str | None,
    out: Path | None,
    as_json: bool,
) -> None:
    """Write the model card of a search run: lineage, scores, kinship, recipe.

    The card is validated against the Hub's metadata rules before anything is written.

    \b
    Examples:
      hub-merge card run --repo me/merged
      hub-merge card run --node g2-1 --license apache-2.0 --out card/
    """
    from ..card import write_card

    result = write_card(run, out, node_id=node_id, license=license_, repo_id=repo_id)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    click.echo(
        f"Wrote the card of {result.node} (license {result.license}) to {result.readme} "
        f"and {result.hub_merge_json.name}."
    )
