"""Pull a model or adapter pinned to its exact commit, fetching only what a merge needs.

- **Pinned.** A reference is resolved to the commit sha before anything is downloaded, and files
  are fetched *at that sha*, so lineage records what was really merged.
- **Minimal and safe.** :func:`~hub_merge.hub.layout.classify` decides from the listing what to
  fetch; pickle-only repos are refused before any download unless the caller opts in, and then
  converted once to safetensors (:mod:`hub_merge.hub.convert`).
- **Offline.** With ``HF_HUB_OFFLINE=1`` a pull is served from the cache by sha or by ref.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import huggingface_hub
from huggingface_hub import constants, hf_hub_download, snapshot_download
from huggingface_hub.file_download import repo_folder_name

from ..errors import HubError, UnsupportedRepoError
from ..refs import ModelRef
from ..version import __version__
from .client import get_api, hub_errors, is_offline, resolve_endpoint
from .convert import convert_pickle_folder, converted_folder_for_local, converted_folder_for_repo
from .layout import (
    META_FILES,
    AdapterInfo,
    Kind,
    RepoLayout,
    card_data_dict,
    card_license,
    classify,
)

# --- pull --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PulledModel:
    """A model or adapter on local disk, pinned to the exact commit it came from.

    ``ref`` is what the user wrote; ``revision`` the commit sha it resolved to (``None`` for a
    local folder). ``base_model`` is the adapter's base, or the card's single ``base_model``.
    """

    ref: ModelRef
    path: Path
    kind: Kind
    repo_id: str | None = None
    revision: str | None = None
    base_model: str | None = None
    base_revision: str | None = None  # the adapter's base commit sha when it pins one
    license: str | None = None
    card_data: dict[str, Any] = field(default_factory=dict)
    adapter: AdapterInfo | None = None
    files: tuple[str, ...] = ()
    pickle: bool = False

    @property
    def name(self) -> str:
        return self.ref.name

    @property
    def pinned(self) -> ModelRef:
        """The reference pinned to its commit (``org/name@<sha>``), or the folder."""
        if self.repo_id and self.revision:
            return ModelRef(repo_id=self.repo_id, revision=self.revision)
        return self.ref

    @property
    def id(self) -> str:
        """The Hub id, or the folder path for local models: what lineage and cards show."""
        return self.repo_id or str(self.path)

    @property
    def base_models(self) -> tuple[str, ...]:
        """Every base the card names (a merge lists several)."""
        base = self.card_data.get("base_model")
        if isinstance(base, str):
            return (base,)
        return tuple(base or ())

    def to_json(self) -> dict[str, Any]:
        return {
            "ref": str(self.ref),
            "repo_id": self.repo_id,
            "revision": self.revision,
            "path": str(self.path),
            "kind": self.kind,
            "base_model": self.base_model,
            "base_revision": self.base_revision,
            "license": self.license,
            "adapter": None
            if self.adapter is None
            else {
                "rank": self.adapter.rank,
                "alpha": self.adapter.alpha,
                "target_modules": list(self.adapter.target_modules)
                if isinstance(self.adapter.target_modules, tuple)
                else self.adapter.target_modules,
            },
            "files": list(self.files),
        }


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UnsupportedRepoError(
            f"{path} is not valid JSON ({err}); the repo looks broken."
        ) from None
    return data if isinstance(data, dict) else None


def read_card_data(folder: Path) -> dict[str, Any]:
    readme = folder / "README.md"
    if not readme.is_file():
        return {}
    try:
        return dict(
            huggingface_hub.ModelCard.load(readme, ignore_metadata_errors=True).data.to_dict()
        )
    except Exception:  # a broken card must not stop a merge; lineage then lacks its metadata
        return {}


def _describe(
    ref: ModelRef,
    folder: Path,
    layout: RepoLayout,
    *,
    repo_id: str | None,
    sha: str | None,
    card: dict[str, Any],
    tags: Iterable[str] = (),
    base_sha: str | None = None,
) -> PulledModel:
    adapter = None
    base_model = None
    if layout.kind == "adapter":
        adapter = AdapterInfo.from_config(_read_json(folder / "adapter_config.json") or {})
        base_model = adapter.base_model
    else:
        bases = card.get("base_model")
        base_model = (
            bases
            if isinstance(bases, str)
            else (bases[0] if isinstance(bases, list) and len(bases) == 1 else None)
        )
    return PulledModel(
        ref=ref,
        path=folder,
        kind=layout.kind,
        repo_id=repo_id,
        revision=sha,
        base_model=base_model,
        base_revision=base_sha,
        license=card_license(card, tags),
        card_data=card,
        adapter=adapter,
        files=layout.files,
        pickle=layout.pickle,
    )


def _local_files(folder: Path) -> list[str]:
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and ".cache" not in p.relative_to(folder).parts
    )


def _as_safetensors(
    folder: Path, layout: RepoLayout, out: Path, where: str
) -> tuple[Path, RepoLayout]:
    """The folder every reader uses: ``folder`` itself, or the safetensors conversion of its
    pickle weights (only reached with ``allow_pickle``; classify refuses them otherwise)."""
    if not layout.pickle:
        return folder, layout
    files = convert_pickle_folder(folder, layout, out, where=where)
    return out, RepoLayout(kind=layout.kind, files=tuple(files), pickle=True)


def inspect_folder(
    folder: str | Path,
    *,
    allow_pickle: bool = False,
    ref: ModelRef | None = None,
    cache_dir: str | Path | None = None,
) -> PulledModel:
    """Describe a local model folder (no Hub access) with the same checks as :func:`pull`.

    A folder of pickle weights is converted (with ``allow_pickle``) into ``cache_dir`` (default:
    the huggingface_hub cache), never into the folder itself.
    """
    folder = Path(folder).expanduser().resolve()
    if not folder.is_dir():
        raise UnsupportedRepoError(f"{folder} is not a folder.")
    layout = classify(
        _local_files(folder),
        where=str(folder),
        config=_read_json(folder / "config.json"),
        tokenizer_config=_read_json(folder / "tokenizer_config.json"),
        adapter_config=_read_json(folder / "adapter_config.json"),
        allow_pickle=allow_pickle,
    )
    if layout.pickle:
        cache = Path(cache_dir or constants.HF_HUB_CACHE)
        out = converted_folder_for_local(cache, folder, layout.files)
        folder, layout = _as_safetensors(folder, layout, out, str(folder))
    return _describe(
        ref or ModelRef(path=str(folder)),
        folder,
        layout,
        repo_id=None,
        sha=None,
        card=read_card_data(folder),
    )


def resolve_revision(
    repo_id: str,
    revision: str | None = None,
    *,
    endpoint: str | None = None,
    token: str | None = None,
) -> str:
    """The commit sha that ``revision`` (branch, tag, sha; default branch when None) points to."""
    api = get_api(endpoint, token)
    with hub_errors(
        "resolve the revision", repo_id=repo_id, revision=revision, endpoint=endpoint, token=token
    ):
        return str(api.model_info(repo_id, revision=revision).sha)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verify(folder: Path, expected: dict[str, str], download) -> None:
    """Check each LFS file against the sha256 the Hub lists; re-fetch once on a mismatch.

    huggingface_hub checks sizes and resumes dropped transfers, but not content hashes, so a
    corrupted resume or a bad proxy would otherwise reach the merge silently.
    """
    for name, oid in expected.items():
        path = folder / name
        if _sha256(path) == oid:
            continue
        download(name)
        if _sha256(path) != oid:
            raise HubError(
                f"{name} downloaded from the Hub does not match its sha256 ({oid[:12]}...) even "
                "after a fresh download. Retry later; if it persists, the mirror/server is corrupt."
            )


def pull(
    ref: str | Path | ModelRef,
    *,
    allow_pickle: bool = False,
    cache_dir: str | Path | None = None,
    verify: bool = True,
    endpoint: str | None = None,
    token: str | None = None,
) -> PulledModel:
    """Fetch what a merge needs of one model or adapter, pinned to its exact commit.

    Args:
        ref: ``org/name``, ``org/name@revision`` (branch, tag or sha) or a local folder.
        allow_pickle: accept pickle-only (``.bin``) weights: they are loaded with
            ``torch.load(weights_only=True)`` (tensors only, never code) and converted once to
            safetensors in the cache, with a :class:`~hub_merge.hub.convert.PickleWeightsWarning`.
            Without it such repos are refused from their file listing, before any download.
        cache_dir: huggingface_hub cache folder (default: the usual HF cache).
        verify: check downloaded LFS files against the sha256 the Hub lists.
        endpoint, token: default from ``HF_ENDPOINT`` / ``HF_TOKEN`` / ``hf auth login``.

    Returns:
        A :class:`PulledModel` whose ``path`` is a folder transformers and peft can load.

    Raises:
        UnsupportedRepoError, UnsafeWeightsError, RemoteCodeError: the repo cannot be merged.
        HubError, AuthError: the Hub could not be reached or refused the request.

    >>> m = pull("org/expert@v1")  # doctest: +SKIP
    >>> m.revision, m.kind  # doctest: +SKIP
    ('3f2a...', 'full')
    """
    ref = ModelRef.parse(ref)
    if ref.is_local:
        return inspect_folder(
            ref.path or "", allow_pickle=allow_pickle, ref=ref, cache_dir=cache_dir
        )
    repo_id = str(ref.repo_id)
    if is_offline():
        return _pull_offline(ref, allow_pickle=allow_pickle, cache_dir=cache_dir)
    api = get_api(endpoint, token)
    ctx = {"repo_id": repo_id, "revision": ref.revision, "endpoint": endpoint, "token": token}
    with hub_errors("read the model info", **ctx):
        info = api.model_info(repo_id, revision=ref.revision, files_metadata=True)
    sha = str(info.sha)
    siblings = {s.rfilename: s for s in info.siblings or []}
    dl = {
        "repo_id": repo_id,
        "revision": sha,
        "cache_dir": cache_dir,
        "endpoint": resolve_endpoint(endpoint),
        "token": token,
        "library_name": "hub-merge",
        "library_version": __version__,
    }
    where = f"{repo_id}@{sha[:12]}"
    # 1. The listing alone refuses code, GGUF and pickle-only repos before any download.
    files = sorted(siblings)
    classify_kw = {"where": where, "allow_pickle": allow_pickle}
    classify(files, **classify_kw)
    # 2. Small JSON files settle the rest (auto_map, peft type), still before any weight.
    meta = [f for f in META_FILES if f in siblings]
    with hub_errors("download the model's config files", **ctx):
        folder = Path(snapshot_download(allow_patterns=meta, **dl))
    layout = classify(
        files,
        config=_read_json(folder / "config.json"),
        tokenizer_config=_read_json(folder / "tokenizer_config.json"),
        adapter_config=_read_json(folder / "adapter_config.json"),
        **classify_kw,
    )
    # 3. Only the files a merge needs, at the resolved sha.
    with hub_errors("download the model files", **ctx):
        folder = Path(snapshot_download(allow_patterns=list(layout.files), **dl))
    if verify:
        expected = {
            f: s.lfs.sha256 for f in layout.files if (s := siblings.get(f)) is not None and s.lfs
        }

        def refetch(name: str) -> None:
            with hub_errors("re-download a corrupted file", **ctx):
                hf_hub_download(filename=name, force_download=True, **dl)

        _verify(folder, expected, refetch)
    _remember_ref(folder, ref.revision, sha)
    # 4. Pickle weights (allowed above) become safetensors once, beside the snapshots.
    folder, layout = _as_safetensors(
        folder, layout, converted_folder_for_repo(folder.parent.parent, sha), where
    )
    card = read_card_data(folder) or card_data_dict(getattr(info, "card_data", None))
    base_sha = _adapter_base_sha(folder, layout, endpoint=endpoint, token=token)
    return _describe(
        ref,
        folder,
        layout,
        repo_id=repo_id,
        sha=sha,
        card=card,
        tags=info.tags or (),
        base_sha=base_sha,
    )


def _remember_ref(snapshot: Path, revision: str | None, sha: str) -> None:
    """Record ``revision -> sha`` in the cache (``refs/<revision>``) for offline pulls by name.

    We download at the resolved sha, so huggingface_hub never writes the ref itself.
    """
    revision = revision or constants.DEFAULT_REVISION
    if revision == sha:
        return
    ref_file = snapshot.parent.parent / "refs" / revision
    with contextlib.suppress(OSError):  # a read-only cache only loses offline-by-name lookups
        ref_file.parent.mkdir(parents=True, exist_ok=True)
        ref_file.write_text(sha)


def _adapter_base_sha(
    folder: Path, layout: RepoLayout, *, endpoint: str | None, token: str | None
) -> str | None:
    """Resolve the base revision an adapter pins (adapter_config ``revision``) to a commit sha."""
    if layout.kind != "adapter":
        return None
    info = AdapterInfo.from_config(_read_json(folder / "adapter_config.json") or {})
    if not info.base_revision or not info.base_model or Path(info.base_model).exists():
        return None
    if re.fullmatch(r"[0-9a-f]{40}", info.base_revision):
        return info.base_revision
    try:
        return resolve_revision(info.base_model, info.base_revision, endpoint=endpoint, token=token)
    except HubError:
        return None  # unknown here; compatibility then compares by id only


def _pull_offline(
    ref: ModelRef, *, allow_pickle: bool, cache_dir: str | Path | None
) -> PulledModel:
    """Serve a pull from the huggingface_hub cache (``HF_HUB_OFFLINE=1``): a cached sha or ref."""
    repo_id = str(ref.repo_id)
    # snapshot_download(local_files_only=True) insists on a complete snapshot of the whole repo
    # (or of the exact allow_patterns used), which a filtered pull never leaves; the cache layout
    # (refs/<revision> -> sha, snapshots/<sha>/) is public and stable, so read it directly.
    storage = Path(cache_dir or constants.HF_HUB_CACHE) / repo_folder_name(
        repo_id=repo_id, repo_type="model"
    )
    revision = ref.revision or "main"
    ref_file = storage / "refs" / revision
    sha = ref_file.read_text().strip() if ref_file.is_file() else revision
    folder = storage / "snapshots" / sha
    if not re.fullmatch(r"[0-9a-f]{40}", sha) or not folder.is_dir():
        raise HubError(
            f"Cannot pull from the local cache: '{repo_id}@{revision}' is not in the local cache "
            "and offline mode is on (HF_HUB_OFFLINE=1). Run once online, or unset HF_HUB_OFFLINE."
        )
    sha = folder.name  # cache snapshots are named by commit sha
    local = _local_files(folder)
    layout = classify(
        local,
        where=f"{repo_id}@{sha[:12]} (cached)",
        config=_read_json(folder / "config.json"),
        tokenizer_config=_read_json(folder / "tokenizer_config.json"),
        adapter_config=_read_json(folder / "adapter_config.json"),
        allow_pickle=allow_pickle,
    )
    missing = [f for f in layout.files if not (folder / f).is_file()]
    if missing:
        raise HubError(
            f"{repo_id}@{sha[:12]} is only partly cached (missing {missing[:3]}); run the pull online once."
        )
    folder, layout = _as_safetensors(
        folder, layout, converted_folder_for_repo(storage, sha), f"{repo_id}@{sha[:12]}"
    )
    return _describe(ref, folder, layout, repo_id=repo_id, sha=sha, card=read_card_data(folder))


def pull_many(refs: Iterable[str | Path | ModelRef], **kwargs: Any) -> list[PulledModel]:
    """:func:`pull` each reference in order (same keyword arguments)."""
    return [pull(r, **kwargs) for r in refs]
