"""``hub-merge merge``: run one merge recipe into a model folder."""

from __future__ import annotations

import json
import re
from pathlib import Path

import click

from ..errors import ConfigError
from ._hubopts import endpoint_option, token_option


def _size(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)B?\s*", text.upper())
    if not match:
        raise ConfigError(f"--max-shard-size {text!r} is not a size like 5GB, 500MB or 1000000.")
    factor = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}[match.group(2)]
    return int(float(match.group(1)) * factor)


def _pull_refs(recipe, *, endpoint: str | None, token: str | None):
    """The recipe with every Hub ref (nested ones too) replaced by its pulled folder."""
    from ..hub import pull
    from ..refs import ModelRef

    def local(item):
        if item is None:
            return None
        if not isinstance(item, str):
            return _pull_refs(item, endpoint=endpoint, token=token)
        if ModelRef.parse(item).is_local:
            return item
        return str(pull(item, endpoint=endpoint, token=token).path)

    models = [e.model_copy(update={"model": local(e.model)}) for e in recipe.models]
    update = {"base": local(recipe.base), "models": models}
    if recipe.slices:  # each slice source names a model: the same pulled folder
        update["slices"] = [
            sl.model_copy(
                update={
                    "sources": [
                        src.model_copy(update={"model": local(src.model)}) for src in sl.sources
                    ]
                }
            )
            for sl in recipe.slices
        ]
    if recipe.tokenizer is not None:  # the models its settings name: the same pulled folders
        update["tokenizer"] = recipe.tokenizer.with_models(local)
    return recipe.model_copy(update=update)


@click.command("merge")
@click.argument("recipe", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output model folder.")
@click.option(
    "--device", default="auto", show_default=True, help="auto (CUDA if present), cpu, cuda."
)
@click.option("--max-shard-size", default="5GB", show_default=True, help="Shard size limit.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
@click.option(
    "--mergekit-yaml",
    "show_mergekit",
    is_flag=True,
    help="Print the equivalent mergekit config and exit.",
)
@click.option(
    "--exact-mergekit",
    is_flag=True,
    help="Use mergekit's own arithmetic (bit-identical, slower) instead of hub-merge's "
    "linear-time sparsification for ties/dare/breadcrumbs/della (ties broken by index) and its "
    "Philox DARE masks (mergekit draws from torch's generator).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@endpoint_option
@token_option
def command(
    recipe,
    out,
    device,
    max_shard_size,
    overwrite,
    show_mergekit,
    exact_mergekit,
    as_json,
    endpoint,
    token,
) -> None:
    """Merge models per RECIPE (YAML: method, base, models, parameters, dtype, seed).

    \b
    Example:
      hub-merge merge recipe.yaml --out merged --device auto
    \b
    recipe.yaml:
      method: ties
      base: ./base
      models:
        - {model: ./math, parameters: {weight: 1.0, density: 0.5}}
        - {model: ./code-lora, parameters: {weight: 0.7, density: 0.5}}
      seed: 0

    A mergekit-yaml config works as written (models or slices, parameters, dtype, out_dtype,
    random_seed, tokenizer_source or tokenizer, chat_template); parameters its method does not read are ignored with one warning, as mergekit
    ignores them. A random method (dare, della, arcee_fusion) without a seed gets one, printed
    and recorded in the output.

    Models may be local folders or Hub refs (org/name[@rev]). `hub-merge plan` runs first: any
    incompatibility fails the merge in seconds, before a weight is downloaded; then Hub refs are
    pulled (pinned to their commits) and merged.
    """
    from ..merge import MergeRecipe, merge_to_folder
    from ..plan import check_method, plan_recipe

    parsed = MergeRecipe.from_yaml(Path(recipe))
    if exact_mergekit:
        parsed = parsed.model_copy(update={"exact_mergekit": True})
    if show_mergekit:
        click.echo(parsed.to_mergekit_yaml())
        return
    unseeded = parsed.unseeded_random_methods()
    if unseeded:  # a seed now, so the recipe recorded in the output (and printed) replays it
        import secrets

        seed = secrets.randbelow(2**31)
        parsed = parsed.with_seed(seed)
        if not as_json:
            click.echo(
                f"{', '.join(unseeded)} draws random numbers and the recipe names no seed: using "
                f"seed {seed} (recorded in the output's metadata; add `seed: {seed}` to the "
                "recipe to get the same tensors again).",
                err=True,
            )
    check_method(parsed)  # before any I/O
    plan_recipe(parsed, endpoint=endpoint, token=token).raise_for_issues()
    parsed = _pull_refs(parsed, endpoint=endpoint, token=token)
    path = merge_to_folder(
        parsed,
        out,
        device=device,
        max_shard_bytes=_size(max_shard_size),
        overwrite=overwrite,
        progress=not as_json,
    )
    if as_json:
        click.echo(
            json.dumps(
                {"out": str(path), "recipe_hash": parsed.recipe_hash(), "recipe": parsed.to_dict()}
            )
        )
    else:
        click.echo(f"Merged ({parsed.method}) into {path}")
