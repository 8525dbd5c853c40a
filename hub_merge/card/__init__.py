"""Model cards for merged models: lineage, scores and kinship as Hub metadata and a readable page.

The Hub builds its model tree from ``base_model`` + ``base_model_relation`` and shows evaluation
results from ``model-index``; everything else a user needs to trust a merge (which exact commits
went in, how they were combined, how related they were, how to redo it) goes in the body and in
the ``hub_merge`` block. mergekit's cards miss most of this.

The core is pure: :func:`build_card` turns a :class:`~hub_merge.lineage.FamilyTree` (plus, when
the run saved them, its recipe trees) into a ``huggingface_hub.ModelCard`` rendered from the Jinja
template ``templates/model_card_template.md``. :func:`write_card` is the thin file layer used by
``hub-merge card``: it reads a run folder and writes ``README.md`` and ``hub_merge.json`` into the
model folder. No network access, ever: a card must render offline (unlike ``mergekit/card.py``).

Example:
    >>> tree = FamilyTree.load("run/family_tree.json")  # doctest: +SKIP
    >>> card = build_card(tree, repo_id="me/merged")  # doctest: +SKIP
    >>> validate_card(card)  # doctest: +SKIP
"""

from __future__ import annotations

from .constants import DEPENDENCIES, IMAGES, KINSHIP_PAPER, METHODS, TEMPLATE_NAME
from .files import (
    CardResult,
    default_out_dir,
    dependency_versions,
    hub_merge_json,
    merge_arithmetic,
    validate_card,
    write_card,
)
from .licenses import LicenseChoice, choose_license, license_sources, resolve_license
from .render import build_card, card_metadata, mermaid_tree, template_path
from .steps import base_models, merge_steps, step_recipe

__all__ = [
    "DEPENDENCIES",
    "IMAGES",
    "KINSHIP_PAPER",
    "METHODS",
    "TEMPLATE_NAME",
    "merge_arithmetic",
    "CardResult",
    "LicenseChoice",
    "choose_license",
    "base_models",
    "build_card",
    "card_metadata",
    "default_out_dir",
    "dependency_versions",
    "hub_merge_json",
    "license_sources",
    "merge_steps",
    "mermaid_tree",
    "resolve_license",
    "step_recipe",
    "template_path",
    "validate_card",
    "write_card",
]
