"""``hub-merge plan``: check a merge and estimate its cost before any weight is downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ._hubopts import endpoint_option, token_option


@click.command("plan")
@click.argument("recipe", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option("--base", help="Base model (folder or org/name[@rev]), as for `search`.")
@click.option(
    "--experts", multiple=True, help="Expert models or adapters (repeat), as for `search`."
)
@click.option(
    "--allow-pickle", is_flag=True, help="Accept pickle-only weights (they can run code)."
)
@click.option("--cache-dir", type=click.Path(file_okay=False), help="huggingface_hub cache folder.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@endpoint_option
@token_option
def command(recipe, base, experts, allow_pickle, cache_dir, as_json, endpoint, token) -> None:
    """Find every reason a merge would fail, reading only configs, tokenizers and headers.

    Give a RECIPE (as for `merge`), or --base and --experts (as for `search`). Reads each
    model's file listing, config.json, tokenizer files, card (license) and safetensors headers
    (HTTP range requests): no weights. Reports layer-count, shape, vocabulary, missing-tensor,
    method-contract, adapter-base, license and pickle-only problems, and estimates download,
    disk, peak RAM/VRAM and time. Exits non-zero (as `merge` would fail) on any blocking problem.

    \b
    Examples:
      hub-merge plan recipe.yaml
      hub-merge plan --base org/base --experts org/a --experts org/lora-b --json
    """
    from ..errors import ConfigError, IncompatibleModelsError
    from ..merge import MergeRecipe
    from ..plan import plan_models, plan_recipe

    kw = {
        "allow_pickle": allow_pickle,
        "endpoint": endpoint,
        "token": token,
        "cache_dir": cache_dir,
    }
    if recipe:
        plan = plan_recipe(MergeRecipe.from_yaml(Path(recipe)), **kw)
    elif experts:
        plan = plan_models(base, list(experts), **kw)
    else:
        raise ConfigError("Give a RECIPE file, or --experts (and usually --base).")
    if as_json:
        click.echo(json.dumps(plan.to_json()))
    else:
        click.echo(plan.summary())
    if not plan.ok:  # the exit code of the error `merge` and `search` raise for the same plan
        raise click.exceptions.Exit(IncompatibleModelsError.exit_code)
