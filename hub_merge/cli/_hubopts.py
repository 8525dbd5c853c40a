"""Options shared by every command that talks to the Hub (one definition, same help everywhere)."""

from __future__ import annotations

import click

endpoint_option = click.option(
    "--endpoint",
    envvar="HF_ENDPOINT",
    show_envvar=True,
    default=None,
    help="Hub URL (default: the public Hub, or HF_ENDPOINT). E.g. a local hub-merge server.",
)
token_option = click.option(
    "--token",
    default=None,
    help="Hub token (default: HF_TOKEN, then the `hf auth login` store). Never printed.",
)
