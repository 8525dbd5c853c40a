"""Publishing a built zoo to a Hub as separate repos, each with its own card."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from hub_merge.errors import ConfigError

from .record import Zoo
from .train import progress_bar

__all__ = ["UploadedZoo", "upload_zoo"]


@dataclass(frozen=True)
class UploadedZoo:
    """Where each zoo model lives on the Hub after :func:`upload_zoo`."""

    repo_ids: dict[str, str]  # "base", "expert/<task>", "adapter/<task>" -> repo id
    created: list[str]  # repo ids created by this call (the rest already existed)

    @property
    def base(self) -> str:
        return self.repo_ids["base"]


def upload_zoo(
    zoo: Zoo,
    *,
    endpoint: str | None = None,
    token: str | None = None,
    include: Iterable[str] | None = None,
    progress: bool = False,
) -> UploadedZoo:
    """Publish the zoo as separate Hub repos, each with its own card, the way real experts live.

    Adapters are uploaded with ``base_model_name_or_path`` set to the base's repo id (the local
    build names a folder), so peft and hub-merge resolve the base through the Hub. A repo that
    already has a commit is left as it is: the zoo is deterministic, and keeping its commit keeps
    the shas that lineage (and a resumable search) recorded. The token must write under
    ``hub-merge-zoo`` (on a local Hub: a token of user ``hub-merge-zoo``).

    Args:
        include: keys of ``zoo.repo_ids`` to upload (default: all), e.g. ``["base", "adapter/sort"]``.
    """
    from huggingface_hub import CommitOperationAdd

    from hub_merge.hub import get_api

    api = get_api(endpoint, token)
    keys = list(include) if include is not None else list(zoo.all_models())
    folders = zoo.all_models()
    unknown = [k for k in keys if k not in folders or k not in zoo.repo_ids]
    if unknown:
        raise ConfigError(f"Not in zoo {zoo.name}: {unknown}; choose from {sorted(folders)}.")
    created: list[str] = []
    bar = progress_bar(len(keys), f"{zoo.name}: uploading to the Hub", progress)
    for key in keys:
        repo_id, folder = zoo.repo_ids[key], folders[key]
        bar.set_postfix_str(repo_id)
        if api.repo_exists(repo_id) and api.list_repo_files(repo_id):
            bar.update(1)
            continue
        api.create_repo(repo_id, exist_ok=True)
        ops = []
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            rel = path.relative_to(folder).as_posix()
            if rel == "adapter_config.json":
                cfg = json.loads(path.read_text())
                cfg["base_model_name_or_path"] = zoo.repo_ids["base"]
                data: Any = (json.dumps(cfg, indent=2, sort_keys=True) + "\n").encode()
            else:
                data = str(path)
            ops.append(CommitOperationAdd(path_in_repo=rel, path_or_fileobj=data))
        api.create_commit(repo_id, operations=ops, commit_message=f"Add {key} of zoo {zoo.name}")
        created.append(repo_id)
        bar.update(1)
    bar.close()
    return UploadedZoo(repo_ids={k: zoo.repo_ids[k] for k in keys}, created=created)
