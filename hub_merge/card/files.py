"""The file layer: validate, write README.md and hub_merge.json into the model folder."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard

from .. import card_rules
from ..atomic import atomic_path, atomic_write
from ..errors import CardValidationError, ConfigError
from ..lineage import FamilyTree
from ..version import __version__
from .constants import DEPENDENCIES, IMAGES
from .licenses import resolve_license
from .render import build_card, clean_json, kinship_block, reproduce_command
from .steps import card_steps, merge_node, published

_TOKEN_LIKE = re.compile(r"\bhf_[A-Za-z0-9]{8,}\b")


def validate_card(card: ModelCard | str) -> None:
    """Refuse a card the Hub would reject, or one that leaks a token, before anything is uploaded.

    Applies the Hub's metadata rules (``hub_merge.card_rules``, shared with the local Hub's
    ``/api/validate-yaml``), then hub-merge's own: a merge card names its relation and library,
    carries its lineage, and contains no access token.

    Raises:
        CardValidationError: with every problem found, one per line.
    """
    text = str(card)
    check = card_rules.check_readme(text)
    errors = list(check.errors)
    meta: dict[str, Any] = {}
    if not errors:
        meta = card_rules.parse_front_matter(text) or {}
        if meta.get("base_model_relation") not in (None, "merge"):
            errors.append("'base_model_relation' of a merged model must be 'merge'")
        if "library_name" not in meta:
            errors.append("'library_name' must be set (transformers, or peft for an adapter)")
        if not isinstance(meta.get("hub_merge"), dict) or not meta["hub_merge"].get("lineage"):
            errors.append("the 'hub_merge' block with the lineage is missing")
    secrets = [
        t for t in (os.environ.get("HF_TOKEN"), os.environ.get("HUGGING_FACE_HUB_TOKEN")) if t
    ]
    if _TOKEN_LIKE.search(text) or any(len(t) >= 4 and t in text for t in secrets):
        errors.append(
            "the card contains an access token; remove it (tokens never belong in a repo)"
        )
    if errors:
        raise CardValidationError("Model card is invalid:\n- " + "\n- ".join(errors))


# --- hub_merge.json and the files ----------------------------------------------------------------


def dependency_versions() -> dict[str, str | None]:
    """Installed versions of hub-merge and the libraries that decide a merge's tensors."""
    versions: dict[str, str | None] = {"hub-merge": __version__}
    for name in DEPENDENCIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def hub_merge_json(
    tree: FamilyTree,
    *,
    node_id: str | None = None,
    license: str | None = None,
    recipes: Mapping[str, Any] | None = None,
    versions: Mapping[str, str | None] | None = None,
) -> dict[str, Any]:
    """The machine-readable record beside the card: lineage, kinship, recipe, versions.

    ``lineage`` is the whole :class:`FamilyTree` (``FamilyTree.from_dict`` reads it back).
    """
    node = merge_node(tree, node_id)
    choice = resolve_license(tree, node.id, license)
    steps = card_steps(tree, node.id, recipes)
    given = (recipes or {}).get(node.id)
    record = clean_json(
        {
            "format": 1,
            "node": node.id,
            "license": {
                "license": choice.license,
                "license_name": choice.license_name,
                "parents": choice.parents,
                "explicit": choice.explicit,
            },
            "lineage": tree.to_dict(),
            "kinship": kinship_block(tree),
            "recipe": {
                "tree": given if isinstance(given, Mapping) else None,
                "steps": [
                    {"node": s.id, "recipe": s.recipe, "mergekit_yaml": s.mergekit_yaml}
                    for s in steps
                ],
                "command": reproduce_command(tree),
            },
            "versions": dict(versions if versions is not None else dependency_versions()),
        }
    )
    return published(record, tree)


@dataclass(frozen=True)
class CardResult:
    """What :func:`write_card` wrote."""

    readme: Path
    hub_merge_json: Path
    node: str
    license: str
    images: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "readme": str(self.readme),
            "hub_merge_json": str(self.hub_merge_json),
            "node": self.node,
            "license": self.license,
            "images": list(self.images),
        }


def default_out_dir(run_dir: Path, tree: FamilyTree, node_id: str) -> Path:
    """Where a card goes: the materialised model's folder when the run wrote it, else ``card/``."""
    if node_id == tree.winner and (run_dir / "winner").is_dir():
        return run_dir / "winner"
    if (run_dir / "nodes" / node_id).is_dir():
        return run_dir / "nodes" / node_id
    return run_dir / "card"


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, text)


def _kinship_png(tree: FamilyTree, path: Path) -> bool:
    if len(tree.kinship_ids) < 2 or len(tree.kinship_matrix) != len(tree.kinship_ids):
        return False
    from types import SimpleNamespace

    from ..plots import plot_kinship

    # plot_kinship reads only names/metric/matrix; the run keeps no full KinshipResult.
    view = SimpleNamespace(
        names=list(tree.kinship_ids), metric=tree.kinship_metric, matrix=tree.kinship_matrix
    )
    try:
        plot_kinship(view, path)  # type: ignore[arg-type]
    except (OSError, ValueError):
        return False  # a missing picture must not cost the user the card
    return True


def merge_arithmetic(folder: Path) -> str | None:
    """Whose arithmetic computed a merged model folder (its safetensors metadata), if recorded."""
    from safetensors import safe_open

    from ..merge.kernels import ARITHMETIC_KEY

    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not files:
        return None
    with safe_open(str(files[0]), framework="pt") as handle:
        return (handle.metadata() or {}).get(ARITHMETIC_KEY)


def write_card(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    node_id: str | None = None,
    license: str | None = None,
    repo_id: str | None = None,
) -> CardResult:
    """Write ``README.md`` + ``hub_merge.json`` (and the run's plots) for a node of a run folder.

    Everything is rendered and validated before the first file is written; each file is written
    under a temporary name and renamed, so a failure leaves no half-written card.

    Args:
        run_dir: the search's run folder (``family_tree.json``, optional ``recipes.json``, plots).
        out_dir: default: ``RUN/winner/`` for the materialised winner, else ``RUN/card/``.
        node_id: default: the winner. license, repo_id: see :func:`build_card`.

    >>> write_card("run", repo_id="me/merged").readme  # doctest: +SKIP
    PosixPath('run/winner/README.md')
    """
    run = Path(run_dir)
    tree = FamilyTree.load(run / "family_tree.json")
    node = merge_node(tree, node_id)
    recipes: dict[str, Any] | None = None
    if (run / "recipes.json").is_file():
        try:
            recipes = json.loads((run / "recipes.json").read_text())
        except json.JSONDecodeError as err:
            raise ConfigError(f"{run / 'recipes.json'} is corrupt ({err}).") from err
    out = Path(out_dir) if out_dir else default_out_dir(run, tree, node.id)
    library = "peft" if (out / "adapter_config.json").is_file() else "transformers"
    sources = {name: run / name for name in IMAGES if (run / name).is_file()}
    sources.update({name: out / name for name in IMAGES if (out / name).is_file()})
    with tempfile.TemporaryDirectory() as scratch:
        if "kinship.png" not in sources and _kinship_png(tree, Path(scratch) / "kinship.png"):
            sources["kinship.png"] = Path(scratch) / "kinship.png"
        card = build_card(
            tree,
            node_id=node.id,
            license=license,
            repo_id=repo_id,
            recipes=recipes,
            library_name=library,
            images=list(sources),
            arithmetic=merge_arithmetic(out),
        )
        validate_card(card)
        record = hub_merge_json(tree, node_id=node.id, license=license, recipes=recipes)
        text = json.dumps(record, indent=2)
        if _TOKEN_LIKE.search(text):
            raise CardValidationError("hub_merge.json would contain an access token; refusing.")

        out.mkdir(parents=True, exist_ok=True)
        for name, src in sources.items():
            if src.resolve() != (out / name).resolve():
                with atomic_path(out / name) as tmp:
                    shutil.copyfile(src, tmp)
    _write_text(out / "hub_merge.json", text + "\n")
    _write_text(out / "README.md", str(card))
    choice = resolve_license(tree, node.id, license)
    return CardResult(
        readme=out / "README.md",
        hub_merge_json=out / "hub_merge.json",
        node=node.id,
        license=choice.license_name or choice.license,
        images=sorted(sources),
    )
