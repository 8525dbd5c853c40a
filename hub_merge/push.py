"""Push a merged model folder (weights, card, lineage) to the Hub in one commit.

One commit means the repo never shows a half-uploaded model: ``upload_folder`` uploads the LFS
blobs first and then makes a single commit that references them, which the Hub applies all or
nothing. If anything fails before that commit lands, the repo's history is unchanged.

Choice: when *this* push created the repo and the commit then failed, the new (empty) repo is
deleted again, so a failed first push leaves the namespace exactly as it was and a retry starts
clean. A repo that existed before is never deleted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import AuthError, PushError
from .hub import get_api, hub_errors, resolve_endpoint, scrub, translate_error

# Never upload local caches and partial files that may sit in an output folder.
_IGNORE = [
    ".cache/**",
    "**/.cache/**",
    "*.incomplete",
    "**/*.incomplete",
    "**/__pycache__/**",
    "*.lock",
    ".git/**",
]


@dataclass(frozen=True)
class PushResult:
    """Where the pushed model now lives, and which commit holds it."""

    repo_id: str
    repo_url: str
    commit_url: str
    commit_sha: str
    pr_url: str | None = None
    created_repo: bool = False

    def to_json(self) -> dict[str, object]:
        return dict(self.__dict__)


def _files(folder: Path) -> list[Path]:
    # Broken symlinks are kept so the readability check reports them instead of skipping them.
    return sorted(
        p
        for p in folder.rglob("*")
        if (p.is_file() or p.is_symlink()) and ".cache" not in p.relative_to(folder).parts
    )


def _check_readable(folder: Path) -> list[Path]:
    """Open every file before touching the Hub, so an unreadable file fails the push up front."""
    files = _files(folder)
    if not files:
        raise PushError(f"Nothing to push: {folder} holds no files.")
    for path in files:
        try:
            with path.open("rb") as fh:
                fh.read(1)
        except OSError as err:
            raise PushError(
                f"Cannot read {path} ({err.strerror or err}); nothing was pushed. Fix the file "
                "(permissions, broken link) and run the push again."
            ) from None
    return files


def push(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    create_pr: bool = False,
    commit_message: str | None = None,
    commit_description: str | None = None,
    revision: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
) -> PushResult:
    """Create ``repo_id`` if needed and upload everything in ``folder`` as ONE commit.

    Args:
        folder: the model folder (weights, config, tokenizer, README.md, hub_merge.json ...).
        repo_id: ``namespace/name`` on the Hub; created (``private`` or public) when missing.
        create_pr: open a pull request instead of committing to the branch.
        commit_message: defaults to "Upload <folder name> with hub-merge".
        revision: the branch to commit to (default: the repo's default branch).
        token, endpoint: default from ``HF_TOKEN`` / ``hf auth login`` and ``HF_ENDPOINT``.

    Returns:
        :class:`PushResult` with the commit URL and sha (and the PR URL with ``create_pr``).

    Raises:
        AuthError: no token, an expired one, or one without write rights.
        PushError: anything else; the repo is as it was before, and the message says what to retry.

    >>> push("out/merged", "me/merged").commit_url  # doctest: +SKIP
    'https://huggingface.co/me/merged/commit/3f2a...'
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise PushError(
            f"Cannot push {folder}: it is not a folder. Point at the merge output folder."
        )
    _check_readable(folder)
    api = get_api(endpoint, token)
    ctx = {"repo_id": repo_id, "endpoint": endpoint, "token": token, "write": True}
    with hub_errors("check whether the repo exists", **ctx):
        existed = api.repo_exists(repo_id)
    created = False
    if not existed:
        with hub_errors("create the repo", **ctx):
            url = api.create_repo(repo_id, private=private, exist_ok=True)
        created = True
    else:
        url = None
    message = commit_message or f"Upload {folder.resolve().name} with hub-merge"
    try:
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            commit_message=message,
            commit_description=commit_description,
            revision=revision,
            create_pr=create_pr,
            ignore_patterns=_IGNORE,
        )
    except Exception as err:  # noqa: BLE001 - every failure must leave the repo as it was
        mapped = translate_error(
            err,
            action="push",
            repo_id=repo_id,
            revision=revision,
            endpoint=endpoint,
            token=token,
            write=True,
        )
        cleanup = ""
        if created:
            try:
                api.delete_repo(repo_id)
                cleanup = " The empty repo this push had created was deleted again."
            except Exception:  # noqa: BLE001 - best effort; say so
                cleanup = f" The repo {repo_id} was created by this push and is still there, empty."
        retry = (
            f" Nothing was committed: {repo_id} is as it was before.{cleanup} Fix the cause and "
            f"run the same push again."
        )
        cls = AuthError if isinstance(mapped, AuthError) else PushError
        raise cls(scrub(str(mapped) + retry, token)) from None
    repo_url = str(url) if url is not None else f"{resolve_endpoint(endpoint)}/{repo_id}"
    return PushResult(
        repo_id=repo_id,
        repo_url=repo_url,
        commit_url=str(info.commit_url),
        commit_sha=str(info.oid),
        pr_url=str(info.pr_url) if info.pr_url else None,
        created_repo=created,
    )


__all__ = ["PushResult", "push"]
