"""``hub-merge plan``: everything that would make a merge fail, found before any weight is downloaded.

A user's top complaint about mergekit is an error that surfaces after twenty minutes of
downloading. A plan reads only what is small: each model's file listing, ``config.json``,
``adapter_config.json``, the tokenizer files and the card (license), and the safetensors
*headers* (tensor names, shapes, dtypes) through HTTP range requests on the resolve URLs
(``HfApi.parse_safetensors_file_metadata``: the first 100 kB of each weight file, more only for
huge headers). Local folders are read the same way from disk (headers only).

It reports every incompatibility at once (layer count, tensor shapes, vocabulary, missing
tensors, the method's input contract, the adapters' base, conflicting licenses, pickle-only or
remote-code repos) and estimates download bytes, disk, peak RAM/VRAM and time. ``merge`` and
``search`` run it first, so they fail in seconds.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import hub
from .compat import _SEMANTIC_FIELDS, _vocab
from .errors import HubMergeError, IncompatibleModelsError
from .hub.layout import _as_dict, _license
from .hub.pull import _card_data
from .refs import ModelRef
from .tensors import ADAPTER_WEIGHTS, CheckpointReader

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
# Rough throughputs for the time estimate (2-core CPU figures from benchmarks/RESULTS.md).
DOWNLOAD_BYTES_PER_S = 50e6
MERGE_BYTES_PER_S = {"linear": 400e6, "sparse": 120e6}


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


@dataclass(frozen=True)
class Issue:
    """One incompatibility; ``blocking`` ones stop ``merge`` and ``search``."""

    model: str
    what: str
    detail: str
    blocking: bool = True

    def __str__(self) -> str:
        return f"{self.model}: {self.what}: {self.detail}"


@dataclass
class MergePlan:
    method: str | None
    base: ModelMeta | None
    models: list[ModelMeta]
    issues: list[Issue]
    estimates: dict[str, float]

    @property
    def ok(self) -> bool:
        return not any(i.blocking for i in self.issues)

    def raise_for_issues(self) -> None:
        """Raise :class:`IncompatibleModelsError` listing every blocking issue, or return."""
        blocking = [i for i in self.issues if i.blocking]
        if blocking:
            lines = "\n  ".join(str(i) for i in blocking[:20])
            more = f"\n  ... and {len(blocking) - 20} more" if len(blocking) > 20 else ""
            raise IncompatibleModelsError(
                f"The merge cannot work ({len(blocking)} problem(s), found before any weight "
                f"was downloaded); drop or replace these models:\n  {lines}{more}"
            )

    def to_json(self) -> dict[str, Any]:
        def meta(m: ModelMeta) -> dict[str, Any]:
            return {
                "ref": m.ref,
                "id": m.id,
                "kind": m.kind,
                "revision": m.revision,
                "layers": m.layers,
                "tensors": len(m.tensors),
                "weight_bytes": m.weight_bytes,
                "download_bytes": m.download_bytes,
                "license": m.license,
                "problem": m.problem,
            }

        return {
            "ok": self.ok,
            "method": self.method,
            "base": meta(self.base) if self.base else None,
            "models": [meta(m) for m in self.models],
            "issues": [asdict(i) for i in self.issues],
            "estimates": self.estimates,
        }

    def summary(self) -> str:
        e = self.estimates
        lines = [
            f"plan: {self.method or 'merge'} of {len(self.models)} model(s)"
            + (f" on {self.base.id}" if self.base else ""),
            f"  download {_gb(e['download_bytes'])}, disk {_gb(e['disk_bytes'])}, peak RAM "
            f"{_gb(e['peak_ram_bytes'])}, peak VRAM (--device cuda) {_gb(e['peak_vram_bytes'])}, "
            f"time ~{e['seconds']:.0f} s (rough)",
        ]
        for i in self.issues:
            lines.append(f"  {'ERROR' if i.blocking else 'note '} {i}")
        lines.append("  OK: no incompatibility found" if self.ok else "  the merge would fail")
        return "\n".join(lines)


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


# --- reading one model ----------------------------------------------------------------------


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
    card = _card_data(folder) or _as_dict(getattr(info, "card_data", None))
    meta.license = _license(card, info.tags or ())
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


# --- checks ---------------------------------------------------------------------------------


def _lora_deltas(meta: ModelMeta) -> dict[str, tuple[int, ...]]:
    """Base tensor name -> delta shape, from the adapter's header (B: (out, r), A: (r, in))."""
    fan_in_fan_out = bool((meta.adapter_config or {}).get("fan_in_fan_out"))
    out: dict[str, tuple[int, ...]] = {}
    for key, (shape, _) in meta.tensors.items():
        name = key.removeprefix("base_model.model.")
        for a, b, transpose in (
            (".lora_A.weight", ".lora_B.weight", fan_in_fan_out),
            (".lora_embedding_A", ".lora_embedding_B", True),
        ):
            if name.endswith(a):
                key_b = key[: -len(a)] + b
                if key_b in meta.tensors:
                    o, i = meta.tensors[key_b][0][0], shape[1]
                    out[name[: -len(a)] + ".weight"] = (i, o) if transpose else (o, i)
    return out


def _same_base(declared: str | None, ref: ModelMeta) -> bool:
    if not declared:
        return False
    if declared in (ref.id, ref.ref):
        return True
    local = Path(declared).expanduser()
    return ref.folder is not None and local.exists() and local.resolve() == ref.folder.resolve()


def _vocab_issue(ref: ModelMeta, m: ModelMeta) -> Issue | None:
    if ref.folder is None or m.folder is None:
        return None
    a, b = _vocab(ref.folder), _vocab(m.folder)
    if a is None or b is None or a == b:
        return None
    if a[0] != b[0]:
        return Issue(m.id, "tokenizer", f"different tokenizer files ({b[0]} vs {a[0]})")
    if isinstance(a[1], dict):
        return Issue(
            m.id,
            "vocabulary",
            f"{len(b[1])} tokens vs {len(a[1])}, or the same ids mean other tokens",
        )
    return Issue(m.id, "vocabulary", f"{a[0]} differs")


def _pair_issues(ref: ModelMeta, m: ModelMeta) -> list[Issue]:
    if m.kind == "adapter":
        declared = (m.adapter_config or {}).get("base_model_name_or_path")
        issues = []
        if not _same_base(declared, ref):
            issues.append(Issue(m.id, "adapter base", f"trained on {declared!r}, not on {ref.id}"))
        for name, shape in _lora_deltas(m).items():
            if name not in ref.tensors:
                issues.append(Issue(m.id, f"tensor {name}", "targets a tensor the base lacks"))
            elif tuple(ref.tensors[name][0]) != shape:
                issues.append(
                    Issue(m.id, f"tensor {name}", f"delta {shape} vs base {ref.tensors[name][0]}")
                )
        return issues
    issues = []
    for key in _SEMANTIC_FIELDS:
        stated = key in ("model_type", "architectures") or (key in ref.config and key in m.config)
        if stated and ref.config.get(key) != m.config.get(key):
            issues.append(
                Issue(m.id, f"config.{key}", f"{m.config.get(key)!r} vs {ref.config.get(key)!r}")
            )
    if ref.layers != m.layers:
        issues.append(Issue(m.id, "layer count", f"{m.layers} layers vs {ref.layers}"))
    if not ref.tensors or not m.tensors:
        return issues  # pickle weights: no header to compare
    missing = [n for n in ref.tensors if n not in m.tensors]
    extra = [n for n in m.tensors if n not in ref.tensors]
    if missing:
        issues.append(Issue(m.id, "missing tensors", f"{len(missing)}, e.g. {missing[0]!r}"))
    if extra:
        issues.append(Issue(m.id, "extra tensors", f"{len(extra)}, e.g. {extra[0]!r}"))
    for name, (shape, _) in ref.tensors.items():
        if name in m.tensors and tuple(m.tensors[name][0]) != tuple(shape):
            vocab = (
                " (a different vocabulary size)" if ("embed" in name or "lm_head" in name) else ""
            )
            issues.append(
                Issue(m.id, f"tensor {name}", f"shape {m.tensors[name][0]} vs {shape}{vocab}")
            )
    return issues


def _steps(recipe: Any) -> list[Any]:
    """Every merge step of a (possibly nested) recipe, innermost first."""
    out = []
    for item in recipe.inputs():
        if not isinstance(item, str):
            out += _steps(item)
    return out + [recipe]


def check_method(recipe: Any) -> None:
    """Each step's method and parameters against the method's input contract (no I/O).

    Raises UnknownMethodError / ConfigError, as ``merge_to_folder`` would, naming what is valid.
    """
    for step in _steps(recipe):
        _check_step(step)


def _check_step(recipe: Any) -> None:
    from .merge.methods import get_method, validate_parameters

    if recipe.is_leaf:
        return
    validate_parameters(
        get_method(recipe.method),
        recipe.parameters,
        [e.parameters for e in recipe.models],
        n_inputs=len(recipe.models),
        has_base=recipe.base is not None,
    )


def _method_issues(recipe: Any) -> list[Issue]:
    try:
        check_method(recipe)
    except HubMergeError as err:
        return [Issue(recipe.method, "method input contract", str(err))]
    return []


def _estimates(
    metas: list[ModelMeta], ref: ModelMeta | None, method: str | None
) -> dict[str, float]:
    download = sum(m.download_bytes for m in metas)
    inputs = sum(m.weight_bytes for m in metas)
    tensors = ref.tensors if ref else {}
    out_bytes = sum(math.prod(s) * size for s, size in tensors.values())
    largest = max((math.prod(s) for s, _ in tensors.values()), default=0)
    n = len(metas)
    # Streaming merge: per input a tensor in flight plus the read-ahead (3), float32 working set
    # (deltas, masks, result) and the write-behind queue, plus the interpreter and torch.
    ram = 4 * largest * (4 * n + 6) + 400e6
    vram = 4 * largest * (n + 4)
    sparse = method not in (None, "linear", "slerp", "nuslerp", "passthrough")
    seconds = (
        download / DOWNLOAD_BYTES_PER_S
        + inputs / MERGE_BYTES_PER_S["sparse" if sparse else "linear"]
    )
    return {
        "download_bytes": float(download),
        "disk_bytes": float(download + out_bytes),
        "output_bytes": float(out_bytes),
        "peak_ram_bytes": float(ram),
        "peak_vram_bytes": float(vram),
        "seconds": float(seconds),
    }


def plan_models(
    base: str | Path | None,
    models: Sequence[str | Path],
    *,
    recipe: Any = None,
    allow_pickle: bool = False,
    endpoint: str | None = None,
    token: str | None = None,
    cache_dir: str | Path | None = None,
) -> MergePlan:
    """Plan a merge of ``models`` on ``base`` (or a ``recipe``'s), reading no weights.

    Raises only for the Hub being unreachable or refusing (HubError/AuthError); every
    incompatibility is an :class:`Issue` of the returned plan.
    """
    kw = {
        "allow_pickle": allow_pickle,
        "endpoint": endpoint,
        "token": token,
        "cache_dir": cache_dir,
    }
    base_meta = read_model(base, **kw) if base is not None else None
    metas = [read_model(m, **kw) for m in models]
    method = getattr(recipe, "method", None)
    uses_base = True
    if recipe is not None:
        from .merge.methods import get_method
        from .merge.methods import uses_base as _uses

        try:
            uses_base = _uses(get_method(method))
        except HubMergeError:
            pass
    adapters = any(m.kind == "adapter" for m in metas)
    ref = base_meta if (base_meta is not None and (uses_base or adapters)) else None
    ref = ref or next((m for m in metas if m.kind == "full"), None)
    issues: list[Issue] = []
    for m in ([base_meta] if base_meta else []) + metas:
        if m.problem:
            issues.append(Issue(m.id, "unusable", m.problem))
        if m.note:
            issues.append(Issue(m.id, "note", m.note, blocking=False))
    if base_meta is not None and base_meta.kind == "adapter":
        issues.append(Issue(base_meta.id, "base", "the base must be a full model, not an adapter"))
    if ref is not None and not ref.problem:
        for m in ([base_meta] if base_meta and base_meta is not ref else []) + metas:
            if m is ref or m.problem:
                continue
            issues += _pair_issues(ref, m)
            vocab = _vocab_issue(ref, m)
            if vocab is not None:
                issues.append(vocab)
    if recipe is not None:
        issues += _method_issues(recipe)
    licenses = {m.id: m.license for m in ([base_meta] if base_meta else []) + metas}
    known = sorted({lic for lic in licenses.values() if lic})
    if len(known) > 1:
        who = ", ".join(f"{k} ({v or 'unknown'})" for k, v in licenses.items())
        issues.append(
            Issue(
                "licenses",
                "conflicting licenses",
                f"{who}: the merge's license must be chosen by hand (card --license)",
                blocking=False,
            )
        )
    all_inputs = ([base_meta] if base_meta else []) + metas
    return MergePlan(method, base_meta, metas, issues, _estimates(all_inputs, ref, method))


def plan_recipe(recipe: Any, **kw: Any) -> MergePlan:
    """:func:`plan_models` for a :class:`~hub_merge.merge.MergeRecipe` (nested: all its leaves)."""
    base = recipe.base if isinstance(recipe.base, str) else None
    return plan_models(base, [m for m in recipe.leaves() if m != base], recipe=recipe, **kw)


def preflight_search(config: Any) -> MergePlan:
    """The search's first step: plan base + experts, raise on any blocking issue."""
    plan = plan_models(
        config.base,
        list(config.experts),
        allow_pickle=config.allow_pickle,
        endpoint=config.endpoint,
        token=config.token,
        cache_dir=config.cache_dir,
    )
    plan.raise_for_issues()
    return plan


__all__ = [
    "Issue",
    "MergePlan",
    "ModelMeta",
    "check_method",
    "plan_models",
    "plan_recipe",
    "preflight_search",
    "read_model",
]
