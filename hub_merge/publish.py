"""Publish a search run's winner (or any materialised node) to the Hub with its card, in one commit.

The last step of the pipeline: card → push. Everything that can refuse a publish (no such node,
a license conflict, a card the Hub's validate-yaml rejects, no write token) is checked before
the first byte is uploaded, and the push itself is a single commit, so a refused or failed
publish leaves the repo exactly as it was.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .atomic import atomic_write
from .card import CardResult, write_card
from .errors import ConfigError
from .hub import validate_card_on_hub
from .lineage import FamilyTree
from .push import PushResult, push

__all__ = [
    "CARD_WRITERS",
    "PreparedCard",
    "PublishResult",
    "folder_kind",
    "node_folder",
    "publish",
    "publish_row",
]


@dataclass(frozen=True)
class PublishResult:
    """What :func:`publish` did: the card it wrote and the commit it made."""

    folder: Path
    card: CardResult
    push: PushResult

    @property
    def url(self) -> str:
        return self.push.pr_url or self.push.commit_url

    def to_json(self) -> dict[str, Any]:
        return {"folder": str(self.folder), "card": self.card.to_json(), **self.push.to_json()}


def node_folder(run_dir: str | Path, node_id: str | None = None) -> tuple[str, Path]:
    """The node to publish (default: the winner) and the model folder the search wrote for it.

    Raises:
        ConfigError: not a run folder, no such node, or the node was never written as a model.
    """
    run = Path(run_dir)
    tree_path = run / "family_tree.json"
    if not tree_path.is_file():
        raise ConfigError(
            f"{run} is not a finished search run (no family_tree.json). Run `hub-merge search "
            f"--out {run} ...` first, or point at the run folder it wrote."
        )
    tree = FamilyTree.load(tree_path)
    wanted = node_id or tree.winner
    if wanted not in tree.nodes:
        raise ConfigError(f"No node {wanted!r} in {run}; nodes are: {', '.join(tree.nodes)}.")
    if wanted == tree.winner and (run / "winner").is_dir():
        return wanted, run / "winner"
    folder = run / "nodes" / wanted
    if tree.nodes[wanted].is_original:
        raise ConfigError(
            f"{wanted!r} is one of the original experts, not a merge; there is nothing to publish."
        )
    if not folder.is_dir():
        raise ConfigError(
            f"Node {wanted!r} was not written as a model. Write it with `hub-merge search ... "
            f"--out {run} --resume --save-node {wanted}` (nothing is re-evaluated), then push again."
        )
    return wanted, folder


@dataclass(frozen=True)
class PreparedCard:
    """What a card writer hands :func:`publish`: the folder to push, its card, the commit text."""

    folder: Path
    card: CardResult
    message: str
    description: str


def folder_kind(run_dir: str | Path, node_id: str | None = None) -> str:
    """What a folder holds: ``moe`` (a ``hub-merge moe`` output), else a search run's node,
    ``adapter`` (a LoRA adapter, e.g. the swarm's factor mix) or ``merge`` (a full model)."""
    from .moe.card import is_moe_folder

    if is_moe_folder(run_dir):
        return "moe"
    _, folder = node_folder(run_dir, node_id)
    return "adapter" if (folder / "adapter_config.json").is_file() else "merge"


def _search_card(
    run_dir: str | Path, repo_id: str, node_id: str | None, license: str | None
) -> PreparedCard:
    """A merge's (or a merged adapter's) card, from the search run that made it."""
    node, folder = node_folder(run_dir, node_id)
    card = write_card(run_dir, folder, node_id=node, license=license, repo_id=repo_id)
    return PreparedCard(
        folder,
        card,
        f"Publish merge {node} with hub-merge",
        "Merged by hub-merge; lineage, kinship and recipe in hub_merge.json.",
    )


def _moe_card(
    run_dir: str | Path, repo_id: str, node_id: str | None, license: str | None
) -> PreparedCard:
    """A MoE's card, re-rendered for ``repo_id`` from the folder's ``hub_merge.json``."""
    from .moe.card import write_moe_readme

    if node_id is not None or license is not None:
        raise ConfigError(
            f"{run_dir} is a MoE folder: it has no nodes, and its license was chosen when it was "
            "built (hub-merge moe --license); drop --node and --license."
        )
    card = write_moe_readme(run_dir, repo_id)
    experts = len(json.loads(card.hub_merge_json.read_text())["experts"])
    return PreparedCard(
        Path(run_dir),
        card,
        f"Publish MoE of {experts} experts",
        "Assembled by hub-merge moe; lineage and routing in hub_merge.json.",
    )


# Folder kind -> card writer (the adapter's card is the merge card, with library_name peft).
CARD_WRITERS: dict[str, Callable[[str | Path, str, str | None, str | None], PreparedCard]] = {
    "merge": _search_card,
    "adapter": _search_card,
    "moe": _moe_card,
}


def publish(
    run_dir: str | Path,
    repo_id: str,
    *,
    node_id: str | None = None,
    license: str | None = None,
    private: bool = False,
    create_pr: bool = False,
    commit_message: str | None = None,
    endpoint: str | None = None,
    token: str | None = None,
    section: str | None = None,
) -> PublishResult:
    """Write the card into the folder, have the Hub validate it, and push the folder.

    The card writer is picked by what the folder holds (:func:`folder_kind`): a search run's
    merged model or adapter, or a MoE; every kind is validated and pushed the same way.

    Args:
        run_dir: a search's run folder, or a ``hub-merge moe`` output folder.
        repo_id: ``namespace/name`` to publish to; created when missing (``private`` if asked).
        node_id: default: the winner (search runs only).
        license: required when the parents' licenses conflict or are unknown (search runs; a
            MoE's license is chosen when it is built).
        create_pr: open a pull request instead of committing to main.
        section: markdown appended to the card's body (``publish_row``: the leaderboard).
        endpoint, token: default from ``HF_ENDPOINT`` and ``HF_TOKEN`` / ``hf auth login``.

    Raises:
        ConfigError: no such node, or it was never written as a model.
        LicenseConflictError: the parents' licenses conflict and no ``license`` was named.
        CardValidationError: the card breaks the Hub's metadata rules (checked locally, then by
            the Hub's validate-yaml); nothing was uploaded.
        AuthError, PushError: see :func:`hub_merge.push.push`; the repo is as it was.

    >>> publish("run", "me/merged").url  # doctest: +SKIP
    'https://huggingface.co/me/merged/commit/9c1e...'
    """
    writer = CARD_WRITERS[folder_kind(run_dir, node_id)]
    prepared = writer(run_dir, repo_id, node_id, license)
    text = prepared.card.readme.read_text(encoding="utf-8")
    if section:
        text = text.rstrip("\n") + "\n\n" + section
        atomic_write(prepared.card.readme, text)
    validate_card_on_hub(text, endpoint=endpoint, token=token)
    result = push(
        prepared.folder,
        repo_id,
        private=private,
        create_pr=create_pr,
        commit_message=commit_message or prepared.message,
        commit_description=prepared.description,
        endpoint=endpoint,
        token=token,
    )
    return PublishResult(folder=prepared.folder, card=prepared.card, push=result)


def publish_row(
    compare_dir: str | Path, repo_id: str, *, row: str | None = None, **kw: Any
) -> PublishResult:
    """Publish a ``hub-merge compare`` row's model (default: the recommended row).

    Its card carries the leaderboard, with a sentence on how the row was chosen (on dev
    scores). ``kw`` as for :func:`publish`. Raises ConfigError for a row with no model.
    """
    from .leaderboard.rows import row_model

    target = row_model(compare_dir, row)
    if target.node is None:  # a MoE row: its license was chosen when it was built
        wanted = kw.pop("license", None)
        built = json.loads((Path(target.run) / "hub_merge.json").read_text())["license"]
        if wanted is not None and wanted.lower() != str(built).lower():
            raise ConfigError(
                f"Row {target.row!r} is a MoE built under license {built!r}; drop --license "
                "or rebuild it with hub-merge moe --license."
            )
    return publish(target.run, repo_id, node_id=target.node, section=target.section, **kw)
