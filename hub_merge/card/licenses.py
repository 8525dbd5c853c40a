"""The license of a merge, derived from its parents; a conflict needs an explicit choice."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .. import card_rules
from ..errors import LicenseConflictError
from ..lineage import FamilyTree, LineageNode


@dataclass(frozen=True)
class LicenseChoice:
    """The card's license and where it came from.

    ``license`` is what goes in ``license:`` (a Hub license id, ``other`` when the chosen license
    is not one, then named by ``license_name``); ``parents`` maps every original that constrains
    it to its license (None when unknown).
    """

    license: str
    license_name: str | None
    parents: dict[str, str | None]
    explicit: bool = False


def _license_fields(value: str) -> tuple[str, str | None]:
    if value.lower() in card_rules.KNOWN_LICENSES:
        return value.lower(), None
    return "other", value


def license_sources(tree: FamilyTree, node_id: str) -> list[LineageNode]:
    """Originals whose terms bind the merge: the experts it descends from and their base model.

    The base counts too: every expert (and every adapter) is a derivative of its weights.
    """
    nodes = list(tree.originals(node_id))
    if tree.base and tree.base in tree.nodes:
        nodes.insert(0, tree.nodes[tree.base])
    return nodes


def resolve_license(tree: FamilyTree, node_id: str, explicit: str | None = None) -> LicenseChoice:
    """The merge's license: the parents' common license, or the one the user names.

    Args:
        tree (`FamilyTree`): the run's lineage.
        node_id (`str`): the node the card is for.
        explicit (`str`, *optional*): the user's choice (``--license``); wins over the parents'.

    Raises:
        LicenseConflictError: parents disagree, or a parent's license is unknown, and no explicit
            license was given. The message names every parent and its license.

    >>> resolve_license(tree, "g2-1").license  # doctest: +SKIP
    'apache-2.0'
    """
    parents = {n.id: n.license for n in license_sources(tree, node_id)}
    if explicit:
        lic, name = _license_fields(explicit.strip())
        return LicenseChoice(lic, name, parents, explicit=True)

    def describe(ids: Sequence[str]) -> str:
        return "; ".join(f"{i} ({tree.nodes[i].source}): {parents[i] or 'unknown'}" for i in ids)

    unknown = [i for i, lic in parents.items() if not lic]
    if unknown:
        raise LicenseConflictError(
            f"The license of {describe(unknown)} is unknown, so the merge's license cannot be "
            "derived. Check the models' terms and pass one explicitly, e.g. --license apache-2.0."
        )
    distinct = sorted({str(lic).lower() for lic in parents.values()})
    if len(distinct) > 1:
        raise LicenseConflictError(
            f"The parents' licenses conflict ({', '.join(distinct)}): {describe(list(parents))}. "
            "A merge inherits every parent's terms; check they are compatible and choose the "
            "merge's license explicitly, e.g. --license " + distinct[0] + "."
        )
    lic, name = _license_fields(next(iter(parents.values())) or "unknown")
    return LicenseChoice(lic, name, parents)


# --- lineage helpers ----------------------------------------------------------------------------
