"""What a plan knows of one model without its weights: configs, license and safetensors headers.

Local folders are read from disk (headers only); Hub repos through the file listing, a small
snapshot of configs/tokenizer/card, and HTTP range requests for the safetensors headers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import hub
from ..errors import HubMergeError
from ..hub.layout import card_data_dict, card_license
from ..hub.pull import read_card_data
from ..refs import ModelRef
from ..tensors import ADAPTER_WEIGHTS, CheckpointReader

# Small files a plan reads (besides safetensors headers): configs, tokenizer, card.
PLAN_FILES = (
    "config.json",
    "adapter_config.json",
    "tokenizer_config.json",
    "README.md",
    "tokenizer.json",
    "vocab.json",
    "vocab.txt",
    "tokenizer.model",
    "merges.txt",
)
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1}
_DTYPE_BYTES.update({"U8": 1, "BOOL": 1})


@dataclass
class ModelMeta:
    """What a plan knows of one input, without its weights."""

    ref: str
    id: str
    kind: str = "full"  # "full", "adapter", or "unknown" when the repo could not be classified
    revision: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    adapter_config: dict[str, Any] | None = None
    tensors: dict[str, tuple[tuple[int, ...], int]] = field(default_factory=dict)  # shape, itemsize
    weight_bytes: int = 0
    download_bytes: int = 0
    license: str | None = None
    folder: Path | None = None  # where its small files are (for the tokenizer comparison)
    problem: str | None = None  # why it cannot be used at all (pickle-only, remote code...)
    note: str | None = None  # worth saying, but no reason to stop

    @property
    def layers(self) -> int | None:
        n = self.config.get("num_hidden_layers") or self.config.get("n_layer")
        return int(n) if n else None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def _local_meta(ref: ModelRef, allow_pickle: bool) -> ModelMeta:
    folder = Path(ref.path or "").expanduser()
    meta = ModelMeta(ref=str(ref), id=str(folder), folder=folder)
    try:
        pulled = hub.inspect_folder(folder, allow_pickle=allow_pickle, ref=ref)
    except HubMergeError as err:
        meta.kind, meta.problem = "unknown", str(err)
        return meta
    meta.id, meta.kind, meta.license = str(pulled.path), pulled.kind, pulled.license
    meta.config = _read_json(folder / "config.json") or {}
    meta.adapter_config = _read_json(folder / "adapter_config.json")
    if pulled.pickle:  # allowed by the user: converted on pull; no header to check here
        meta.note = "pickle weights (allowed): tensors are checked only after the download"
        return meta
    reader = (
        CheckpointReader(folder, weights_file=ADAPTER_WEIGHTS)
        if meta.kind == "adapter"
        else CheckpointReader(folder)
    )  # safe_open maps the files and parses their headers; no tensor is read
    meta.tensors = {str(n): (reader.shape(n), reader.dtype(n).itemsize) for n in reader.names}
    meta.weight_bytes = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    return meta


def _remote_meta(
    ref: ModelRef, *, allow_pickle: bool, endpoint: str | None, token: str | None, cache_dir: Any
) -> ModelMeta:
    from huggingface_hub import snapshot_download, try_to_load_from_cache

    repo_id = str(ref.repo_id)
    meta = ModelMeta(ref=str(ref), id=repo_id)
    api = hub.get_api(endpoint, token)
    ctx = {"repo_id": repo_id, "revision": ref.revision, "endpoint": endpoint, "token": token}
    with hub.hub_errors("read the model info", **ctx):
        info = api.model_info(repo_id, revision=ref.revision, files_metadata=True)
    sha = str(info.sha)
    meta.revision = sha
    sizes = {s.rfilename: int(s.size or 0) for s in info.siblings or []}
    where = f"{repo_id}@{sha[:12]}"
    small = [f for f in PLAN_FILES if f in sizes]
    with hub.hub_errors("download the model's config and tokenizer files", **ctx):
        folder = Path(
            snapshot_download(
                repo_id=repo_id,
                revision=sha,
                allow_patterns=small,
                cache_dir=cache_dir,
                endpoint=hub.resolve_endpoint(endpoint),
                token=token,
            )
        )
    meta.folder = folder
    meta.config = _read_json(folder / "config.json") or {}
    meta.adapter_config = _read_json(folder / "adapter_config.json")
    card = read_card_data(folder) or card_data_dict(getattr(info, "card_data", None))
    meta.license = card_license(card, info.tags or ())
    try:
        layout = hub.classify(
            sorted(sizes),
            where=where,
            config=meta.config or None,
            tokenizer_config=_read_json(folder / "tokenizer_config.json"),
            adapter_config=meta.adapter_config,
            allow_pickle=allow_pickle,
        )
    except HubMergeError as err:
        meta.kind, meta.problem = "unknown", str(err)
        return meta
    meta.kind = layout.kind
    weights = [f for f in layout.files if f.endswith((".safetensors", ".bin"))]
    meta.weight_bytes = sum(sizes.get(f, 0) for f in weights)
    meta.download_bytes = sum(
        sizes.get(f, 0)
        for f in layout.files
        if not isinstance(
            try_to_load_from_cache(repo_id, f, cache_dir=cache_dir, revision=sha), str
        )
    )
    if layout.pickle:  # allowed by the user: converted on pull; no header to check here
        meta.note = "pickle weights (allowed): tensors are checked only after the download"
        return meta
    for f in (w for w in weights if w.endswith(".safetensors")):
        with hub.hub_errors(f"read the header of {f}", **ctx):
            header = api.parse_safetensors_file_metadata(repo_id, f, revision=sha)
        for name, t in header.tensors.items():
            meta.tensors[name] = (tuple(t.shape), _DTYPE_BYTES.get(t.dtype, 4))
    return meta


def read_model(
    ref: str | Path | ModelRef,
    *,
    allow_pickle: bool = False,
    endpoint: str | None = None,
    token: str | None = None,
    cache_dir: str | Path | None = None,
) -> ModelMeta:
    """Configs, tokenizer, license and tensor headers of one model or adapter (no weights)."""
    parsed = ModelRef.parse(ref)
    if parsed.is_local:
        return _local_meta(parsed, allow_pickle)
    return _remote_meta(
        parsed, allow_pickle=allow_pickle, endpoint=endpoint, token=token, cache_dir=cache_dir
    )
