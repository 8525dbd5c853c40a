"""`hub-merge extension install`: make `hf merge ...` run hub-merge.

The `hf` CLI (huggingface_hub >= 1.x) runs `hf <name> ARGS` as the executable recorded in
`~/.local/share/hf/extensions/hf-<name>/manifest.json`. `hf extensions install` writes that
manifest for a GitHub repository; for an installed package there is no such step, so this command
writes the same manifest pointing at this environment's `hf-merge` console script. The manifest
format is huggingface_hub's (`huggingface_hub/cli/extensions.py::ExtensionManifest`); it is
written here by hand because that class is private CLI internals, not a public API.
"""

from __future__ import annotations

import json
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path

import click

from ..errors import ConfigError

EXTENSIONS_ROOT = Path("~/.local/share/hf/extensions")  # where `hf` looks (its own constant)
SHORT_NAME = "merge"


def hf_merge_executable() -> Path:
    """The `hf-merge` script of this Python environment (falls back to the one on PATH)."""
    beside = Path(sys.executable).parent / "hf-merge"
    if beside.is_file():
        return beside
    found = shutil.which("hf-merge")
    if found is None:
        raise ConfigError(
            "No `hf-merge` executable found: reinstall hub-merge (`pip install hub-merge`) "
            "so its console scripts are created."
        )
    return Path(found)


def install_extension(root: Path | None = None) -> Path:
    """Register `hf-merge` with the `hf` CLI; returns the manifest written (atomically)."""
    from ..atomic import atomic_write
    from ..version import __version__

    folder = (root or EXTENSIONS_ROOT).expanduser() / f"hf-{SHORT_NAME}"
    manifest = {
        "owner": "hub-merge",
        "repo": "hf-merge",
        "repo_id": "hub-merge/hf-merge",
        "short_name": SHORT_NAME,
        "executable_path": str(hf_merge_executable()),
        "type": "binary",
        "installed_at": datetime.now(timezone.utc).isoformat(),
        "description": f"hub-merge {__version__}: kinship-guided merging of Hub models",
        "commit_sha": None,
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "manifest.json"
    atomic_write(path, json.dumps(manifest, indent=2, sort_keys=True))
    return path


@click.group(name="extension")
def command() -> None:
    """Run hub-merge as an extension of the `hf` CLI (`hf merge ...`).

    \b
    Example:
      hub-merge extension install
      hf merge search --base org/base --experts org/a org/b --tasks t.jsonl --out run
    """


@command.command(name="install")
def install() -> None:
    """Register `hf merge` with the hf CLI (writes its extension manifest).

    \b
    Example:
      hub-merge extension install && hf merge --help
    """
    path = install_extension()
    click.echo(f"Registered: `hf merge ...` now runs hub-merge (manifest {path}).")
