"""``hub-merge push``: publish a run's winner (or a named node) with its card, in one commit."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ._hubopts import endpoint_option, token_option


@click.command("push")
@click.argument("run", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--repo", "repo_id", required=True, help="Hub repo to publish to, e.g. me/merged.")
@click.option("--node", "node_id", default=None, help="Node to publish (default: the winner).")
@click.option(
    "--row",
    default=None,
    help="With a `hub-merge compare` folder: the leaderboard row to publish (default: the "
    "recommended row, chosen on dev scores).",
)
@click.option("--private", is_flag=True, help="Create the repo private (when it does not exist).")
@click.option(
    "--create-pr", is_flag=True, help="Open a pull request instead of committing to main."
)
@click.option(
    "--license",
    "license_",
    default=None,
    help="License of the merge; required when the parents' licenses conflict or are unknown.",
)
@click.option("--message", default=None, help="Commit message (default: 'Publish merge NODE ...').")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@endpoint_option
@token_option
def command(
    run: Path,
    repo_id: str,
    node_id: str | None,
    row: str | None,
    private: bool,
    create_pr: bool,
    license_: str | None,
    message: str | None,
    as_json: bool,
    endpoint: str | None,
    token: str | None,
) -> None:
    """Publish a search run's merged model (or a `hub-merge moe` folder) with its card.

    Writes README.md (lineage, kinship, scores, recipe) and hub_merge.json into the model
    folder, has the Hub validate the card, then uploads weights, config, tokenizer, card and
    plots in ONE commit. Anything refused (license conflict, invalid card, no write rights)
    stops before the upload; a failed upload leaves the repo as it was.

    \b
    Examples:
      hub-merge push run --repo me/merged
      hub-merge push run --repo me/merged --node g2-1 --license apache-2.0 --create-pr
      hub-merge push run --repo me/merged --endpoint http://127.0.0.1:8000
      hub-merge push cmp --repo me/merged --row dam   # a `hub-merge compare` row
    """
    from ..errors import ConfigError
    from ..leaderboard.rows import is_compare_folder
    from ..publish import publish, publish_row

    compared = is_compare_folder(run)
    if row is not None and not compared:
        raise ConfigError(f"--row names a row of a `hub-merge compare` folder; {run} is not one.")
    if compared and node_id is not None:
        raise ConfigError("A compare folder is published by --row NAME, not --node.")
    common = {
        "license": license_,
        "private": private,
        "create_pr": create_pr,
        "commit_message": message,
        "endpoint": endpoint,
        "token": token,
    }
    if compared:
        result = publish_row(run, repo_id, row=row, **common)
    else:
        result = publish(run, repo_id, node_id=node_id, **common)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    what = "Opened a pull request" if result.push.pr_url else "Pushed"
    click.echo(
        f"{what}: {result.card.node} of {run} -> {repo_id} (license {result.card.license}), "
        f"commit {result.push.commit_sha[:10]}."
    )
    click.echo(result.url)
