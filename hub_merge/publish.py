"""Publish a search run's winner (or any materialised node) to the Hub with its card, in one commit.

The last step of the pipeline: card → push. Everything that can refuse a publish (no such node,
a license conflict, a card the Hub's validate-yaml rejects, no write token) is checked before
the first byte is uploaded, and the push itself is a single commit, so a refused or failed
publish leaves the repo exactly as it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .card import CardResult, write_card
from .errors import ConfigError
from .hub import validate_card_on_hub
from .lineage import FamilyTree
from .push import PushResult, push

__all__ = ["PublishResult", "node_folder", "publish", "publish_row"]


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
    """Write the node's card into its folder, have the Hub validate it, and push the folder.

    Args:
        run_dir: a search's run folder, or a ``hub-merge moe`` output folder.
        repo_id: ``namespace/name`` to publish to; created when missing (``private`` if asked).
        node_id: default: the winner.
        license: required when the parents' licenses conflict or are unknown.
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
    from .moe.card import is_moe_folder, publish_moe

    if is_moe_folder(run_dir):  # a `hub-merge moe` output: its own card, no search run
        return publish_moe(
            run_dir,
            repo_id,
            private=private,
            create_pr=create_pr,
            commit_message=commit_message,
            endpoint=endpoint,
            token=token,
        )
    node, folder = node_folder(run_dir, node_id)
    card = write_card(run_dir, folder, node_id=node, license=license, repo_id=repo_id)
    if section:
        from .atomic import atomic_write

        text = card.readme.read_text(encoding="utf-8").rstrip("\n") + "\n\n" + section
        atomic_write(card.readme, text)
    validate_card_on_hub(card.readme.read_text(encoding="utf-8"), endpoint=endpoint, token=token)
    message = commit_message or f"Publish merge {node} with hub-merge"
    result = push(
        folder,
        repo_id,
        private=private,
        create_pr=create_pr,
        commit_message=message,
        commit_description="Merged by hub-merge; lineage, kinship and recipe in hub_merge.json.",
        endpoint=endpoint,
        token=token,
    )
    return PublishResult(folder=folder, card=card, push=result)


def publish_row(
    compare_dir: str | Path, repo_id: str, *, row: str | None = None, **kw: Any
) -> PublishResult:
    """Publish a ``hub-merge compare`` row's model (default: the recommended row).

    Its card carries the leaderboard, with a sentence on how the row was chosen (on dev
    scores). ``kw`` as for :func:`publish`. Raises ConfigError for a row with no model.
    """
    from .leaderboard.rows import row_model

    target = row_model(compare_dir, row)
    if target.node is None:  # a MoE folder: its own card
        return publish(target.run, repo_id, **kw)
    return publish(target.run, repo_id, node_id=target.node, section=target.section, **kw)
