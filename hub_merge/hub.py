"""The only module of hub-merge that talks to the Hugging Face Hub.

Everything goes through the real ``huggingface_hub`` client (``HfApi``, ``snapshot_download``), so
the public Hub, a mirror, and the project's local server (``hub_merge.localhub``) behave alike.
Three promises hold for every function here:

- **Pinned.** A reference is resolved to the exact commit sha before anything is downloaded, and
  files are fetched *at that sha*, so lineage records what was really merged.
- **Minimal and safe.** What a repo is (full model, LoRA adapter, or unusable) is decided from its
  file listing and small JSON files before any weight is downloaded; only the files a merge needs
  are fetched; pickle weights need an explicit opt-in and remote code is always refused.
- **Clear failures, no secrets.** ``huggingface_hub`` errors are mapped in one place
  (:func:`hub_errors`) to :class:`~hub_merge.errors.HubError` / ``AuthError`` with a message that
  says what to do; any token is scrubbed from those messages.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import huggingface_hub
from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download
from huggingface_hub import errors as hf_errors
from huggingface_hub.file_download import repo_folder_name

from . import __version__
from .errors import (
    AuthError,
    CardValidationError,
    HubError,
    HubMergeError,
    RemoteCodeError,
    UnsafeWeightsError,
    UnsupportedRepoError,
)
from .refs import ModelRef

try:  # huggingface_hub >= 2 ships its own httpx fork; older releases use httpx itself.
    import httpx2 as _httpx
except ImportError:  # pragma: no cover
    import httpx as _httpx  # type: ignore[no-redef]

PUBLIC_ENDPOINT = "https://huggingface.co"

Kind = Literal["full", "adapter"]

# Small files a merge needs besides the weights (read by transformers / peft / the card writer).
_META_FILES = ("config.json", "adapter_config.json", "tokenizer_config.json", "README.md")
_SUPPORT_PATTERNS = (
    "config.json",
    "generation_config.json",
    "adapter_config.json",
    "README.md",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
_SAFE_WEIGHTS = ("model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json")
_SAFE_ADAPTER = ("adapter_model.safetensors",)
_PICKLE_WEIGHTS = (
    "pytorch_model.bin",
    "pytorch_model-*-of-*.bin",
    "pytorch_model.bin.index.json",
    "adapter_model.bin",
)
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# Formats we recognise but cannot merge, with what to do about them.
_OTHER_FORMATS = {
    ".gguf": "GGUF (llama.cpp) weights",
    ".onnx": "ONNX weights",
    ".h5": "TensorFlow/Keras weights",
    ".msgpack": "Flax weights",
    ".tflite": "TFLite weights",
    ".mlmodel": "Core ML weights",
}
# Custom modelling code shipped in a repo: transformers would need trust_remote_code to use it.
_CODE_FILES = re.compile(
    r"^(?:.*/)?(modeling|configuration|tokenization|processing|image_processing)_[\w]+\.py$"
)


# --- endpoint, client and errors ----------------------------------------------------------------


def resolve_endpoint(endpoint: str | None = None) -> str:
    """The endpoint to use: the argument, else ``HF_ENDPOINT``, else huggingface_hub's default."""
    return (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def is_public_hub(endpoint: str | None = None) -> bool:
    return resolve_endpoint(endpoint) == PUBLIC_ENDPOINT


def configure_transfers(endpoint: str | None = None) -> None:
    """Switch Xet transfers off for any endpoint that is not the public Hub.

    ``hf_xet`` is a dependency of huggingface_hub and is used whenever importable, but only the
    public Hub serves Xet; other servers then fail uploads with a 404 on ``/xet-write-token/``.
    The client reads ``constants.HF_HUB_DISABLE_XET`` at call time, so setting it here suffices.
    """
    if not is_public_hub(endpoint):
        constants.HF_HUB_DISABLE_XET = True


def get_api(endpoint: str | None = None, token: str | None = None) -> HfApi:
    """An ``HfApi`` for ``endpoint`` that identifies hub-merge in its user agent.

    ``token=None`` lets huggingface_hub resolve it as usual (``HF_TOKEN``, then the
    ``hf auth login`` store).
    """
    endpoint = resolve_endpoint(endpoint)
    configure_transfers(endpoint)
    return HfApi(
        endpoint=endpoint, token=token, library_name="hub-merge", library_version=__version__
    )


def validate_card_on_hub(
    text: str, *, repo_type: str = "model", endpoint: str | None = None, token: str | None = None
) -> None:
    """Ask the Hub's ``/api/validate-yaml`` whether it would accept this README, before uploading.

    ``ModelCard.validate`` does the same call but always against ``constants.ENDPOINT`` (fixed at
    import), so it cannot check a card for a local or enterprise Hub chosen per call; this posts
    the same body through huggingface_hub's own HTTP session to the endpoint in use.

    Raises:
        CardValidationError: the Hub rejected the metadata (its message, one problem per line).
        HubError: the Hub could not be asked (network, auth).
    """
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    url = f"{resolve_endpoint(endpoint)}/api/validate-yaml"
    headers = build_hf_headers(token=token, library_name="hub-merge", library_version=__version__)
    headers["Accept"] = "text/plain"
    with hub_errors("validate the model card", endpoint=endpoint, token=token):
        response = get_session().post(
            url, json={"repoType": repo_type, "content": text}, headers=headers
        )
        if response.status_code == 400:
            raise CardValidationError(
                "The Hub rejected the model card's metadata: "
                + scrub(response.text.strip(), token)
                + " Fix the card (or the --license) and push again; nothing was uploaded."
            )
        hf_raise_for_status(response)


def _known_tokens(token: str | None) -> list[str]:
    tokens = [token] if token else []
    with contextlib.suppress(Exception):
        stored = huggingface_hub.get_token()
        if stored:
            tokens.append(stored)
    return tokens


_TOKEN_LIKE = re.compile(r"\bhf_[A-Za-z0-9]{8,}\b")


def scrub(text: str, token: str | None = None) -> str:
    """Remove any token (the one given, the resolved one, anything shaped like ``hf_...``)."""
    for secret in _known_tokens(token):
        if len(secret) >= 4:
            text = text.replace(secret, "***")
    text = _TOKEN_LIKE.sub("hf_***", text)
    return re.sub(r"(?i)(authorization:?\s*bearer\s+)\S+", r"\1***", text)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _status(err: BaseException) -> int | None:
    response = getattr(err, "response", None)
    return getattr(response, "status_code", None)


def translate_error(
    err: BaseException,
    *,
    action: str,
    repo_id: str | None = None,
    revision: str | None = None,
    endpoint: str | None = None,
    token: str | None = None,
    write: bool = False,
) -> HubError:
    """Map a huggingface_hub / transport error to a HubError that says what to do next."""
    where = resolve_endpoint(endpoint)
    repo = f"'{repo_id}'" if repo_id else "the repo"
    detail = _first_line(err)
    login = "Log in with `hf auth login`, set HF_TOKEN, or pass token=... (CLI: --token)."
    status = _status(err)
    if isinstance(err, hf_errors.GatedRepoError):
        out: HubError = AuthError(
            f"{repo} is gated: accept its conditions on {where}/{repo_id} with your account, then "
            f"retry with a token of that account. {login}"
        )
    elif isinstance(err, hf_errors.RepositoryNotFoundError):
        out = HubError(
            f"Cannot {action}: {repo} was not found on {where}, or it is private and your token "
            f"cannot see it. Check the id (and --endpoint); for a private repo: {login}"
        )
    elif isinstance(err, hf_errors.RevisionNotFoundError):
        out = HubError(
            f"Cannot {action}: revision '{revision}' does not exist in {repo} on {where}. Use a "
            "branch, tag or full commit sha that exists (see `hf download`'s --revision)."
        )
    elif isinstance(err, hf_errors.OfflineModeIsEnabled | hf_errors.LocalEntryNotFoundError):
        out = HubError(
            f"Cannot {action}: '{repo_id}{'@' + revision if revision else ''}' is not in the local cache "
            "and offline mode is on (HF_HUB_OFFLINE=1). Run once online, or unset HF_HUB_OFFLINE."
        )
    elif isinstance(err, hf_errors.EntryNotFoundError):
        out = HubError(f"Cannot {action}: a file is missing from {repo}: {detail}")
    elif status == 401:
        out = AuthError(
            f"Cannot {action}: the Hub at {where} rejected your token (invalid or expired). "
            f"Create a new one and {login[0].lower()}{login[1:]}"
        )
    elif status == 403:
        need = "write" if write else "read"
        out = AuthError(
            f"Cannot {action}: your token lacks {need} access to {repo} on {where} (a read-only or "
            f"fine-grained token?). Use a token with {need} rights for that namespace. {login}"
        )
    elif isinstance(err, _httpx.TransportError | ConnectionError | TimeoutError):
        out = HubError(
            f"Cannot {action}: cannot reach {where} ({type(err).__name__}: {detail}). Check the "
            "network and --endpoint / HF_ENDPOINT; to work from the cache, set HF_HUB_OFFLINE=1."
        )
    elif isinstance(err, hf_errors.HfHubHTTPError):
        out = HubError(f"Cannot {action}: the Hub at {where} answered HTTP {status}: {detail}")
    else:
        out = HubError(f"Cannot {action}: {type(err).__name__}: {detail}")
    out.args = (scrub(str(out), token),)
    return out


@contextlib.contextmanager
def hub_errors(
    action: str,
    *,
    repo_id: str | None = None,
    revision: str | None = None,
    endpoint: str | None = None,
    token: str | None = None,
    write: bool = False,
) -> Iterator[None]:
    """Turn huggingface_hub and network errors raised inside the block into HubError/AuthError."""
    try:
        yield
    except HubMergeError:
        raise
    except (
        hf_errors.HfHubHTTPError,
        hf_errors.EntryNotFoundError,
        hf_errors.OfflineModeIsEnabled,
        hf_errors.HFValidationError,
        _httpx.HTTPError,
        OSError,
    ) as err:
        raise translate_error(
            err,
            action=action,
            repo_id=repo_id,
            revision=revision,
            endpoint=endpoint,
            token=token,
            write=write,
        ) from None  # the original may quote request headers; do not chain it


def is_offline() -> bool:
    return bool(constants.is_offline_mode())


# --- what a repo is ----------------------------------------------------------------------------


@dataclass(frozen=True)
class AdapterInfo:
    """What lineage and compatibility need to know about a LoRA adapter."""

    rank: int
    alpha: float
    target_modules: tuple[str, ...] | str | None
    peft_type: str = "LORA"
    base_model: str | None = None
    base_revision: str | None = None  # as written in adapter_config.json ("revision")

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> AdapterInfo:
        targets = cfg.get("target_modules")
        if isinstance(targets, list):
            targets = tuple(sorted(targets))
        rank = int(cfg.get("r", 8))
        return cls(
            rank=rank,
            alpha=float(cfg.get("lora_alpha", rank)),
            target_modules=targets,
            peft_type=str(cfg.get("peft_type", "LORA")).upper(),
            base_model=cfg.get("base_model_name_or_path"),
            base_revision=cfg.get("revision"),
        )


@dataclass(frozen=True)
class RepoLayout:
    """The decision taken from a file listing: the kind of model and the files to download."""

    kind: Kind
    files: tuple[str, ...]
    pickle: bool = False


def _match(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _auto_map(cfg: dict[str, Any] | None) -> dict[str, Any] | None:
    if not cfg:
        return None
    return cfg.get("auto_map") or None


def classify(
    files: Sequence[str],
    *,
    where: str,
    config: dict[str, Any] | None = None,
    tokenizer_config: dict[str, Any] | None = None,
    adapter_config: dict[str, Any] | None = None,
    allow_pickle: bool = False,
) -> RepoLayout:
    """Decide from a repo's file listing and small JSON files what it is and what to download.

    Raises ``RemoteCodeError`` (custom code or ``auto_map``), ``UnsafeWeightsError`` (pickle-only
    weights without ``allow_pickle``) or ``UnsupportedRepoError`` (GGUF, ONNX, ..., or nothing).
    """
    top = [f for f in files if "/" not in f]  # weights and configs of a model live at the root
    code = sorted(f for f in files if _CODE_FILES.match(f))
    auto_map = _auto_map(config) or _auto_map(tokenizer_config)
    if code or auto_map:
        what = ", ".join(code[:3]) if code else f"auto_map {sorted(auto_map or {})}"
        raise RemoteCodeError(
            f"{where} needs custom code to load ({what}); hub-merge never runs remote code "
            "(trust_remote_code). Pick a model that uses a transformers architecture."
        )
    support = [f for f in top if f in _SUPPORT_PATTERNS]
    is_adapter = "adapter_config.json" in top
    if is_adapter:
        peft_type = str((adapter_config or {}).get("peft_type", "LORA")).upper()
        if peft_type != "LORA":
            raise UnsupportedRepoError(
                f"{where} is a {peft_type} adapter; hub-merge merges LoRA adapters only."
            )
        safe = [f for f in top if _match(f, _SAFE_ADAPTER)]
        pickles = [f for f in top if f == "adapter_model.bin"]
        kind: Kind = "adapter"
    else:
        safe = [f for f in top if _match(f, _SAFE_WEIGHTS)]
        if not safe:  # a single oddly named safetensors file is still a checkpoint
            safe = [f for f in top if f.endswith(".safetensors")]
        pickles = [f for f in top if _match(f, _PICKLE_WEIGHTS)]
        kind = "full"
        if safe and "config.json" not in top:
            raise UnsupportedRepoError(
                f"{where} has safetensors weights but no config.json, so its architecture is "
                "unknown. hub-merge needs a transformers model folder or a peft adapter."
            )
    if safe:
        return RepoLayout(kind=kind, files=tuple(sorted(set(support) | set(safe))))
    other_pickles = pickles or [f for f in top if f.endswith(_PICKLE_SUFFIXES)]
    if other_pickles:
        if not allow_pickle:
            raise UnsafeWeightsError(
                f"{where} has only pickle weights ({', '.join(sorted(other_pickles)[:3])}), which "
                "can run arbitrary code when loaded. Ask its author for safetensors, or pass "
                "allow_pickle=True (CLI: --allow-pickle) if you trust it."
            )
        if pickles:
            return RepoLayout(
                kind=kind, files=tuple(sorted(set(support) | set(pickles))), pickle=True
            )
    formats = sorted(
        {desc for f in files for suffix, desc in _OTHER_FORMATS.items() if f.endswith(suffix)}
    )
    if formats:
        raise UnsupportedRepoError(
            f"{where} holds {', '.join(formats)}, which hub-merge cannot merge. Use the "
            "transformers (safetensors) version of the model, or convert it and push that."
        )
    raise UnsupportedRepoError(
        f"{where} holds no model weights hub-merge can use: expected model.safetensors (or "
        "sharded model-*.safetensors with an index) and config.json, or a peft adapter "
        "(adapter_config.json + adapter_model.safetensors)."
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


def _card_data(folder: Path) -> dict[str, Any]:
    readme = folder / "README.md"
    if not readme.is_file():
        return {}
    try:
        return dict(
            huggingface_hub.ModelCard.load(readme, ignore_metadata_errors=True).data.to_dict()
        )
    except Exception:  # a broken card must not stop a merge; lineage then lacks its metadata
        return {}


def _as_dict(card_data: Any) -> dict[str, Any]:
    """ModelCardData (from model_info / list_models) or a plain dict -> dict."""
    if card_data is None:
        return {}
    if hasattr(card_data, "to_dict"):
        return dict(card_data.to_dict())
    return dict(card_data) if isinstance(card_data, dict) else {}


def _license(card: dict[str, Any], tags: Iterable[str] = ()) -> str | None:
    lic = card.get("license")
    if lic == "other" and card.get("license_name"):
        return str(card["license_name"])
    if lic:
        return str(lic)
    for tag in tags:
        if tag.startswith("license:"):
            return tag.split(":", 1)[1]
    return None


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
        license=_license(card, tags),
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


def inspect_folder(
    folder: str | Path, *, allow_pickle: bool = False, ref: ModelRef | None = None
) -> PulledModel:
    """Describe a local model folder (no Hub access) with the same checks as :func:`pull`."""
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
    return _describe(
        ref or ModelRef(path=str(folder)),
        folder,
        layout,
        repo_id=None,
        sha=None,
        card=_card_data(folder),
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
        allow_pickle: accept pickle-only (``.bin``) weights; they can run code when loaded.
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
        return inspect_folder(ref.path or "", allow_pickle=allow_pickle, ref=ref)
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
    meta = [f for f in _META_FILES if f in siblings]
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
    card = _card_data(folder) or _as_dict(getattr(info, "card_data", None))
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
    return _describe(ref, folder, layout, repo_id=repo_id, sha=sha, card=_card_data(folder))


def pull_many(refs: Iterable[str | Path | ModelRef], **kwargs: Any) -> list[PulledModel]:
    """:func:`pull` each reference in order (same keyword arguments)."""
    return [pull(r, **kwargs) for r in refs]


# --- discover ----------------------------------------------------------------------------------

Relation = Literal["finetune", "adapter", "merge", "quantized"]
RELATIONS: tuple[str, ...] = ("finetune", "adapter", "merge", "quantized")
_SORTS = {
    "downloads": "downloads",
    "likes": "likes",
    "created_at": "created_at",
    "last_modified": "last_modified",
    "trending_score": "trending_score",
}
_DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}


@dataclass(frozen=True)
class Candidate:
    """One model of the base's Hub model tree, as :func:`discover` lists it."""

    id: str
    relation: str
    downloads: int | None = None
    likes: int | None = None
    license: str | None = None
    has_safetensors: bool | None = None
    size: int | None = None  # bytes of safetensors weights, when the Hub says
    sha: str | None = None
    library_name: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _weights_size(info: Any) -> tuple[bool | None, int | None]:
    """(has safetensors, size in bytes) from a listing or model_info entry, None when unknown."""
    st = getattr(info, "safetensors", None)
    siblings = getattr(info, "siblings", None)
    names = [s.rfilename for s in siblings] if siblings else None
    has = None if names is None else any(n.endswith(".safetensors") for n in names)
    size = None
    if siblings and all(
        s.size is not None for s in siblings if s.rfilename.endswith(".safetensors")
    ):
        sizes = [s.size for s in siblings if s.rfilename.endswith(".safetensors")]
        size = sum(sizes) if sizes else None
    if size is None and st is not None and getattr(st, "parameters", None):
        size = sum(n * _DTYPE_BYTES.get(dt, 4) for dt, n in st.parameters.items())
        has = True
    return has, size


def discover(
    base_model: str,
    relations: Sequence[str] = ("finetune", "adapter", "merge"),
    *,
    limit: int = 20,
    sort: str = "downloads",
    license: str | Sequence[str] | None = None,
    max_size: int | None = None,
    safetensors_only: bool = False,
    endpoint: str | None = None,
    token: str | None = None,
) -> list[Candidate]:
    """Candidates derived from ``base_model`` on the Hub's model tree, best first.

    Queries ``base_model:<relation>:<id>`` (the Hub builds it from each card's ``base_model``
    and ``base_model_relation``). ``license`` keeps only those licenses; ``max_size`` (bytes)
    drops models whose weights are larger, and those whose size the Hub does not give.

    >>> [c.id for c in discover("org/base", ["adapter"], limit=5)]  # doctest: +SKIP
    ['org/lora-a', 'org/lora-b']
    """
    ModelRef.parse(base_model)  # validates the id with a clear error
    bad = [r for r in relations if r not in RELATIONS]
    if bad:
        raise HubError(f"Unknown relation(s) {bad}; use any of {list(RELATIONS)}.")
    if sort not in _SORTS:
        raise HubError(f"Unknown sort {sort!r}; use one of {sorted(_SORTS)}.")
    if limit < 1:
        raise HubError(f"limit must be at least 1, got {limit}.")
    if is_offline():
        raise HubError(
            "discover lists models on the Hub, which offline mode (HF_HUB_OFFLINE=1) forbids; unset it."
        )
    licenses = {license} if isinstance(license, str) else set(license or ())
    api = get_api(endpoint, token)
    found: dict[str, Candidate] = {}
    for relation in relations:
        kept = 0
        with hub_errors(
            f"list the {relation}s of {base_model}",
            repo_id=base_model,
            endpoint=endpoint,
            token=token,
        ):
            listing = api.list_models(
                filter=f"base_model:{relation}:{base_model}",
                sort=_SORTS[sort],
                full=True,
                cardData=True,
            )
            for info in listing:
                if info.id in found or info.id == base_model:
                    continue
                card = _as_dict(getattr(info, "card_data", None))
                lic = _license(card, info.tags or ())
                if licenses and lic not in licenses:
                    continue
                has, size = _weights_size(info)
                if max_size is not None and size is None:
                    has, size = _weights_size(api.model_info(info.id, files_metadata=True))
                if max_size is not None and (size is None or size > max_size):
                    continue
                if safetensors_only and has is False:
                    continue
                found[info.id] = Candidate(
                    id=info.id,
                    relation=relation,
                    downloads=info.downloads,
                    likes=info.likes,
                    license=lic,
                    has_safetensors=has,
                    size=size,
                    sha=info.sha,
                    library_name=getattr(info, "library_name", None),
                )
                kept += 1
                if kept >= limit:
                    break
    key = {"downloads": lambda c: c.downloads or 0, "likes": lambda c: c.likes or 0}.get(sort)
    out = list(found.values())
    if key is not None:
        out.sort(key=lambda c: (-key(c), c.id))
    return out[:limit]


def parse_size(text: str | int | None) -> int | None:
    """``"1.5GB"``, ``"500MB"``, ``"2GiB"`` or a byte count -> bytes."""
    if text is None or isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?i?b?)\s*", text.lower())
    if not match:
        raise HubError(f"Cannot read size {text!r}; write e.g. 500MB, 1.5GB or a number of bytes.")
    number, unit = float(match.group(1)), match.group(2).rstrip("b")
    base = 1024 if unit.endswith("i") else 1000
    power = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}[unit.rstrip("i")]
    return int(number * base**power)
