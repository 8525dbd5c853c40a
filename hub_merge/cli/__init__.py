"""The ``hub-merge`` command line: a thin layer over the Python API.

Each command lives in its own module (``hub_merge/cli/<command>.py``) exposing a click command
named ``command``; they are registered in ``COMMANDS`` below. Errors are mapped to one line and an
exit code in ``main`` only, so commands never print tracebacks unless ``HUB_MERGE_DEBUG=1``.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings

import click

from ..errors import HubMergeError, UnusedParameterWarning
from ..version import __version__

# Order is the order shown in `hub-merge --help`. Add a module name here when adding a command.
COMMANDS: list[str] = [
    "pull",
    "discover",
    "kinship",
    "plan",
    "merge",
    "search",
    "compare",
    "moe",
    "moa",
    "card",
    "push",
    "demo",
    "hub",
    "extension",
]


class _OrderedGroup(click.Group):
    """List commands in pipeline order (COMMANDS), not alphabetically as click does."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


@click.group(
    cls=_OrderedGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="hub-merge")
@click.option(
    "-q", "--quiet", is_flag=True, help="No progress display: print only each command's result."
)
def cli(quiet: bool) -> None:
    """Merge expert models from the Hugging Face Hub, guided by model kinship.

    \b
    Examples:
      hub-merge demo --quick                      # everything, end to end, on a local Hub
      hub-merge kinship org/a org/b --base org/base
      hub-merge search --base org/base --experts org/a org/b --tasks t.jsonl --out run
      hub-merge push run --repo me/merged
    """
    from ..progress import quiet_libraries, set_quiet

    quiet_libraries()  # one display per step: ours, not the libraries' nested bars
    if quiet:
        set_quiet(True)


def _register() -> None:
    for name in COMMANDS:
        module = importlib.import_module(f".{name}", __name__)
        cli.add_command(module.command)


_register()


def main(argv: list[str] | None = None, *, prog_name: str = "hub-merge") -> int:
    """Run the CLI; typed errors become one line on stderr and the error's exit code."""
    from ..progress import is_quiet, set_quiet

    was_quiet = is_quiet()
    try:
        return _run(argv, prog_name)
    finally:
        if not was_quiet:  # in-process callers (tests, notebooks) get their display back
            set_quiet(False)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """hub-merge's own warnings as one line on stderr (no file, line or source quote)."""
    if issubclass(category, UnusedParameterWarning):
        click.secho(f"Warning: {message}", fg="yellow", err=True)
    else:
        _PYTHON_SHOWWARNING(message, category, filename, lineno, file, line)


_PYTHON_SHOWWARNING = warnings.showwarning


def _run(argv: list[str] | None, prog_name: str) -> int:
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            rv = cli.main(args=argv, prog_name=prog_name, standalone_mode=False)
    except HubMergeError as err:
        if os.environ.get("HUB_MERGE_DEBUG"):
            raise
        click.secho(f"Error: {err}", fg="red", err=True)
        return err.exit_code
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        return 130
    except click.ClickException as err:
        err.show()
        return err.exit_code
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        return 130
    return rv if isinstance(rv, int) else 0


def hf_main() -> int:
    """The `hf-merge` console script: the same commands, run by the hf CLI as `hf merge ...`."""
    return main(prog_name="hf merge")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
