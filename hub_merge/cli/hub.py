"""`hub-merge hub serve`: run the local Hub-compatible server in the foreground."""

from __future__ import annotations

import os
import stat
import time

import click

from ..errors import ConfigError

TOKENS_ENV = "HUB_MERGE_HUB_TOKENS"  # the same name as hub_merge.localhub.TOKENS_ENV


@click.group(name="hub")
def command() -> None:
    """A local, Hub-compatible server (for tests, the demo and offline work).

    \b
    Example:
      printf 'alice:hf_alice:write\\n' > tokens.txt && chmod 600 tokens.txt
      hub-merge hub serve --data hub-data --port 8000 --token-file tokens.txt
      HF_ENDPOINT=http://127.0.0.1:8000 hf download alice/model
    """


@command.command(name="serve")
@click.option(
    "--data",
    "data_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder holding the repos and blobs (created if missing; survives restarts; several "
    "servers may share it).",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=0, show_default=True, help="0 picks a free port.")
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, exists=True),
    help="File of tokens the server accepts, one USER:TOKEN[:read|write] a line ('#' comments). "
    f"Recommended, as is ${TOKENS_ENV} (comma- or newline-separated specs): both keep "
    "tokens out of the process list.",
)
@click.option(
    "--token",
    "tokens",
    multiple=True,
    hidden=True,
    help="Refused: a token in argv is visible to every local user (`ps`).",
)
def serve(
    data_dir: str, host: str, port: int, token_file: str | None, tokens: tuple[str, ...]
) -> None:
    """Serve the Hub protocol from DATA until interrupted; prints the URL.

    Tokens come from $HUB_MERGE_HUB_TOKENS, then --token-file; without any, only anonymous
    reads work. A token in argv (``--token``) is refused: every local user can read argv.

    \b
    Example:
      export HUB_MERGE_HUB_TOKENS=alice:hf_alice:write,bob:hf_bob:read
      hub-merge hub serve --data ./hub-data --port 8080
      HF_ENDPOINT=http://127.0.0.1:8080 hf download alice/model
    """
    from ..localhub import LocalHub, load_tokens

    if tokens:  # the option exists only to say what to use instead
        raise ConfigError(
            f"--token is refused: argv is visible to every local user; put USER:TOKEN[:read|write] "
            f"lines in a file for --token-file, or in ${TOKENS_ENV}."
        )
    try:
        table = load_tokens((), token_file)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    if token_file is not None and os.stat(token_file).st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        click.echo(f"Warning: {token_file} is readable by other users; chmod 600 it.", err=True)
    with LocalHub(data_dir, host=host, port=port, tokens=table) as hub:
        click.echo(hub.endpoint, nl=True)
        click.echo("Set HF_ENDPOINT to this URL (and HF_TOKEN). Ctrl-C to stop.", err=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
