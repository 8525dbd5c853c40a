"""``hub-merge kinship``: how related are these models? A table, JSON, and a heatmap."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import click

from ..errors import InvalidReferenceError
from ..refs import ModelRef

GROUP_CHOICES = ["attention", "mlp", "embeddings", "norm", "lm_head", "other"]


def _local(text: str) -> tuple[Path, str, str | None]:
    """(folder, display name, Hub id or None) of a folder or a Hub reference."""
    ref = ModelRef.parse(text)
    if ref.is_local:
        return Path(ref.path or ""), ref.name, None
    try:
        hub = importlib.import_module("hub_merge.hub")
    except ImportError:
        hub = None
    pull = getattr(hub, "pull", None)
    if pull is None:
        raise InvalidReferenceError(
            f"{text!r} is a Hub id, but this install cannot download models: pass a local folder."
        )
    pulled = pull(ref)
    folder = Path(getattr(pulled, "path", pulled))
    return folder, ref.name, getattr(pulled, "repo_id", None) or ref.repo_id


@click.command("kinship")
@click.argument("models", nargs=-1, required=True)
@click.option(
    "--base", "base", required=True, help="The shared base model (folder or org/name[@rev])."
)
@click.option(
    "--metric",
    type=click.Choice(["pearson", "cosine", "euclidean"]),
    default="pearson",
    show_default=True,
    help="Pearson correlation of task vectors (paper default), signed cosine, or Euclidean distance.",
)
@click.option(
    "--group",
    "groups",
    multiple=True,
    metavar="GROUP|REGEX",
    help=f"Only these tensors: {', '.join(GROUP_CHOICES)}, or a regex over tensor names. Repeatable.",
)
@click.option("--per-layer", is_flag=True, help="Also show kinship per transformer block.")
@click.option(
    "--plot", type=click.Path(dir_okay=False, path_type=Path), help="Write a heatmap image (PNG)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, or auto.")
def command(models, base, metric, groups, per_layer, plot, as_json, device) -> None:
    """Kinship (task-vector similarity) of MODELS, fine-tunes or LoRA adapters of one BASE.

    One streaming pass over the tensors computes the whole matrix; adapters stay factored.

    \b
    Examples:
      hub-merge kinship ./math ./code ./chat-lora --base ./base-model
      hub-merge kinship org/a org/b --base org/base --metric cosine --group attention --json
      hub-merge kinship ./a ./b ./c --base ./base --per-layer --plot kinship.png
    """
    from ..kinship import kinship_matrix

    base_folder, _, base_id = _local(base)
    resolved = [_local(m) for m in models]
    result = kinship_matrix(
        [folder for folder, _, _ in resolved],
        base_folder,
        metric,
        device=device,
        include=list(groups) or None,
        names=[name for _, name, _ in resolved],
        base_id=base_id,
        progress=not as_json and sys.stderr.isatty(),
    )
    if plot is not None:
        from ..plots import plot_kinship

        plot_kinship(result, plot)
    if as_json:
        click.echo(result.to_json(indent=2))
        return
    from rich.console import Console

    console = Console()
    console.print(result.table())
    if per_layer:
        console.print(result.layer_table())
    if plot is not None:
        console.print(f"Heatmap written to {plot}")
