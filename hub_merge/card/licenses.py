"""The license of a merge, derived from its parents; a conflict needs an explicit choice."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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


def license_fields(value: str) -> tuple[str, str | None]:
    """``(license, license_name)`` for a card: a Hub license id, or ``other`` plus the name."""
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
    nodes = license_sources(tree, node_id)
    return choose_license(
        {n.id: n.license for n in nodes}, explicit, sources={n.id: n.source for n in nodes}
    )


def choose_license(
    parents: Mapping[str, str | None],
    explicit: str | None = None,
    *,
    sources: Mapping[str, str] | None = None,
    what: str = "merge",
) -> LicenseChoice:
    """The one license rule, for any model made of parents (a merge, a MoE).

    The explicit choice wins; else every parent must name the same license (compared without
    case). ``parents`` maps a parent's name to its license (None: unknown); ``sources`` adds
    where each came from, for the message; ``what`` names the made model in it.

    Raises:
        LicenseConflictError: a parent's license is unknown, or the parents' licenses differ,
            and no explicit license was given. The message names every parent and its license.
    """
    parents = dict(parents)
    if explicit and explicit.strip():
        lic, name = license_fields(explicit.strip())
        return LicenseChoice(lic, name, parents, explicit=True)

    def describe(ids: Sequence[str]) -> str:
        where = sources or {}
        return "; ".join(
            f"{i} ({where[i]}): {parents[i] or 'unknown'}"
            if i in where
            else f"{i}: {parents[i] or 'unknown'}"
            for i in ids
        )

    unknown = [i for i, lic in parents.items() if not lic]
    if unknown:
        raise LicenseConflictError(
            f"The license of {describe(unknown)} is unknown, so the {what}'s license cannot be "
            "derived. Check the models' terms and pass one explicitly, e.g. --license apache-2.0."
        )
    distinct = sorted({str(lic).lower() for lic in parents.values()})
    if len(distinct) > 1:
        raise LicenseConflictError(
            f"The parents' licenses conflict ({', '.join(distinct)}): {describe(list(parents))}. "
            f"A {what} inherits every parent's terms; check they are compatible and choose the "
            f"{what}'s license explicitly, e.g. --license " + distinct[0] + "."
        )
    lic, name = license_fields(next(iter(parents.values())) or "unknown")
    return LicenseChoice(lic, name, parents)


# --- lineage helpers ----------------------------------------------------------------------------
