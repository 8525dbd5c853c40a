"""`hub-merge hub serve`: run the local Hub-compatible server in the foreground."""

from __future__ import annotations

import time

import click

from ..errors import ConfigError


@click.group(name="hub")
def command() -> None:
    """A local, Hub-compatible server (for tests, the demo and offline work).

    \b
    Example:
      hub-merge hub serve --data hub-data --port 8000 --token alice:hf_alice:write
      HF_ENDPOINT=http://127.0.0.1:8000 HF_HUB_DISABLE_XET=1 hf download alice/model
    """


@command.command(name="serve")
@click.option(
    "--data",
    "data_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder holding the repos and blobs (created if missing; survives restarts).",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=0, show_default=True, help="0 picks a free port.")
@click.option(
    "--token",
    "tokens",
    multiple=True,
    metavar="USER:TOKEN[:read|write]",
    help="A token the server accepts, e.g. alice:hf_alice:write (repeatable; role "
    "defaults to write). Without tokens only anonymous reads work.",
)
def serve(data_dir: str, host: str, port: int, tokens: tuple[str, ...]) -> None:
    """Serve the Hub protocol from DATA until interrupted; prints the URL.

    \b
    Example:
      hub-merge hub serve --data ./hub-data --port 8080 --token alice:hf_alice:write
      HF_ENDPOINT=http://127.0.0.1:8080 HF_HUB_DISABLE_XET=1 hf download alice/model
    """
    from ..localhub import LocalHub, parse_token_spec

    table = {}
    for spec in tokens:
        try:
            tok, ident = parse_token_spec(spec)
        except ValueError as err:
            raise ConfigError(str(err)) from err
        table[tok] = (ident.user, ident.role)
    with LocalHub(data_dir, host=host, port=port, tokens=table) as hub:
        click.echo(hub.endpoint, nl=True)
        click.echo(
            "Set HF_ENDPOINT to this URL and HF_HUB_DISABLE_XET=1. Ctrl-C to stop.", err=True
        )
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
