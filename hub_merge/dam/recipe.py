"""The ``dam`` merge recipe: what the merge engine needs to rebuild a trained DAM merge.

A DAM merge is a deterministic function of its experts, its base and its coefficient file, so it
is a recipe like any other (scored, cached, put in the lineage and published by the search core)::

    method: dam
    base: ./base
    models: [{model: ./lora-a}, {model: ./lora-b}]     # in the coefficient file's order
    parameters:
      coefficients: /run/dam/dam_coefficients.safetensors
      sha256: 5f0c...                                  # the file's digest: part of the hash
      steps: 60
      lr: 0.005
      ...                                              # the rest of the training settings

The digest is checked before the file is used, so a recipe never silently means another merge.
The method's registry entry (:mod:`.method`) hands ``dam`` recipes to :func:`dam_state_dict` and
:func:`dam_to_folder`; mergekit has no such method.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..merge.recipe import MergeRecipe, ModelEntry

DAM_METHOD = "dam"
PLOT_FILE = "dam_coefficients.png"


def is_dam_recipe(recipe: MergeRecipe) -> bool:
    return recipe.method == DAM_METHOD


def dam_recipe(
    base: str | None,
    experts: Sequence[str],
    coefficients: str | Path,
    digest: str,
    settings: Mapping[str, Any],
) -> MergeRecipe:
    """The recipe of a trained DAM merge (``experts``: recipe strings, in the file's order)."""
    params: dict[str, Any] = {"coefficients": str(coefficients), "sha256": digest}
    params.update({k: v for k, v in settings.items() if v is not None})
    return MergeRecipe(
        method=DAM_METHOD,
        base=base,
        models=[ModelEntry(model=e) for e in experts],
        parameters=params,
    )


def _coefficient_file(recipe: MergeRecipe) -> Path:
    """The recipe's coefficient file, after checking it is the one the recipe was made with."""
    from .train import file_digest

    path = recipe.parameters.get("coefficients")
    digest = recipe.parameters.get("sha256")
    if not isinstance(path, str) or not isinstance(digest, str):
        raise ConfigError(
            "A `dam` recipe needs parameters `coefficients` (the coefficient file) and `sha256`."
        )
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"The `dam` recipe's coefficient file {file} does not exist.")
    if file_digest(file) != digest:
        raise ConfigError(
            f"{file} is not the coefficient file this `dam` recipe was trained with (sha256 "
            "differs); use the file saved with that run."
        )
    return file


def _inputs(
    recipe: MergeRecipe, folders: Mapping[str, str | Path] | None
) -> tuple[dict[str, Path], Path | None]:
    """Expert folders keyed by the coefficient file's names, and the base folder."""
    from .train import read_coefficients

    if any(isinstance(e.model, MergeRecipe) for e in recipe.models) or isinstance(
        recipe.base, MergeRecipe
    ):
        raise ConfigError("A `dam` recipe merges models, not other recipes.")
    folders = dict(folders or {})

    def folder(ref: str) -> Path:
        return Path(folders.get(ref, ref))

    _, meta = read_coefficients(_coefficient_file(recipe))
    import json

    names = json.loads(meta.get("experts", "[]"))
    if len(names) != len(recipe.models):
        raise ConfigError(
            f"The coefficient file holds {len(names)} experts; the recipe lists "
            f"{len(recipe.models)}."
        )
    experts = {n: folder(e.model) for n, e in zip(names, recipe.models, strict=True)}  # type: ignore[arg-type]
    base = folder(recipe.base) if isinstance(recipe.base, str) else None
    return experts, base


def dam_state_dict(
    recipe: MergeRecipe,
    folders: Mapping[str, str | Path] | None = None,
    *,
    device: Any = "auto",
    base_state: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The merged state dict of a ``dam`` recipe (``folders``: recipe string -> local folder).

    ``base_state``: the base already in memory (a search session's); the tensors the merge
    leaves as they are in the base are then those very tensors, not copies."""
    from .load import load_dam

    experts, base = _inputs(recipe, folders)
    model = load_dam(
        experts, _coefficient_file(recipe), base=base, device=device, base_state=base_state
    )
    return model.merged_state_dict()


def dam_to_folder(
    recipe: MergeRecipe,
    out: str | Path,
    folders: Mapping[str, str | Path] | None = None,
    *,
    device: Any = "auto",
    overwrite: bool = False,
    base_state: Mapping[str, Any] | None = None,
) -> Path:
    """Write a ``dam`` recipe as a model folder, with its coefficient file and their picture.

    The coefficients travel with the model (``dam_coefficients.safetensors``), so a pushed repo
    says exactly how it was merged.
    """
    from ..atomic import atomic_path
    from .load import load_dam
    from .plot import plot_coefficients
    from .train import COEFFICIENTS_FILE, read_coefficients

    experts, base = _inputs(recipe, folders)
    file = _coefficient_file(recipe)
    model = load_dam(experts, file, base=base, device=device, base_state=base_state)
    written = model.save_pretrained(
        out, metadata={"hub_merge_recipe": recipe.canonical_json()}, overwrite=overwrite
    )
    with atomic_path(written / COEFFICIENTS_FILE) as tmp:
        shutil.copyfile(file, tmp)
    tensors, meta = read_coefficients(file)
    plot_coefficients(tensors, meta, written / PLOT_FILE)
    return written
