"""``hub-merge pull``: fetch models and adapters pinned to their commits, and check them."""

from __future__ import annotations

import json

import click

from ._hubopts import endpoint_option, token_option


@click.command("pull")
@click.argument("refs", nargs=-1, required=True)
@click.option(
    "--base",
    "base",
    help="Also check every REF can be merged with this base (folder or org/name[@rev]).",
)
@click.option(
    "--allow-pickle",
    is_flag=True,
    help="Accept pickle-only (.bin) weights: loaded with torch.load(weights_only=True), tensors "
    "only, and converted once to safetensors in the cache (a warning says so).",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False),
    help="huggingface_hub cache folder (default: HF cache).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the pulled models as JSON.")
@endpoint_option
@token_option
def command(refs, base, allow_pickle, cache_dir, as_json, endpoint, token) -> None:
    """Download what a merge needs of each REF, resolved to its exact commit sha.

    REF is org/name, org/name@revision (branch, tag or sha) or a local folder. Only safetensors
    weights, configs, tokenizer files, adapter_config.json and README.md are downloaded.
    Repos needing remote code and GGUF-only repos are refused; pickle-only repos too, before any
    download, unless --allow-pickle.

    \b
    Examples:
      hub-merge pull org/expert-a org/lora-b@v1
      hub-merge pull org/expert-a --base org/base --json
      HF_HUB_OFFLINE=1 hub-merge pull org/expert-a@3f2a...   # from the cache
    """
    from ..compat import check_compatible
    from ..hub import pull

    kw = {
        "allow_pickle": allow_pickle,
        "cache_dir": cache_dir,
        "endpoint": endpoint,
        "token": token,
    }
    base_model = pull(base, **kw) if base else None
    pulled = [pull(r, **kw) for r in refs]
    if base_model is not None:
        check_compatible(base_model, pulled)
    if as_json:
        out = {"models": [p.to_json() for p in pulled]}
        if base_model is not None:
            out["base"] = base_model.to_json()
            out["compatible"] = True
        click.echo(json.dumps(out, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("reference", "kind", "commit", "base model", "license", "path")
    for p in ([base_model] if base_model else []) + pulled:
        table.add_row(
            str(p.ref),
            p.kind,
            (p.revision or "local")[:12],
            p.base_model or "",
            p.license or "",
            str(p.path),
        )
    Console().print(table)
    if base_model is not None:
        click.echo(f"All {len(pulled)} models can be merged with {base_model.id}.")
