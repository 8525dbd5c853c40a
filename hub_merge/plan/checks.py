"""The checks of a plan: each input against the reference model, and the recipe's method contract.

Every check returns issues instead of raising, so a plan reports every incompatibility at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..compat import SEMANTIC_FIELDS, vocab_view
from ..errors import HubMergeError
from ..tensors.lora import adapter_refusal
from .meta import ModelMeta
from .report import METHOD_ISSUE, Issue


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


def vocab_issue(ref: ModelMeta, m: ModelMeta) -> Issue | None:
    if ref.folder is None or m.folder is None:
        return None
    a, b = vocab_view(ref.folder), vocab_view(m.folder)
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


def pair_issues(
    ref: ModelMeta, m: ModelMeta, token_axes: dict[str, int] | None = None
) -> list[Issue]:
    """``m`` against the reference; ``token_axes``: tensors a tokenizer merge gives one row
    per output token, which may differ along that axis."""
    if m.kind == "adapter":
        declared = (m.adapter_config or {}).get("base_model_name_or_path")
        issues = []
        refusal = adapter_refusal(m.adapter_config or {}, m.id)
        if refusal:
            issues.append(Issue(m.id, "adapter type", refusal))
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
    for key in SEMANTIC_FIELDS:
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
        theirs = tuple(m.tensors.get(name, (shape,))[0])
        if name in (token_axes or {}) and len(theirs) == len(shape):
            axis = token_axes[name]  # type: ignore[index]
            theirs = theirs[:axis] + tuple(shape)[axis : axis + 1] + theirs[axis + 1 :]
        if name in m.tensors and theirs != tuple(shape):
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
    from ..merge.registry import MERGEKIT, method_for
    from ..merge.run import refuse_tokenizer_settings
    from ..merge.vocab import check_chat_template

    if recipe.is_leaf:
        return
    method = method_for(recipe.method)
    method.check(recipe)  # mergekit's contract, or hub-merge's own method's
    if method is not MERGEKIT:
        refuse_tokenizer_settings(recipe)
    if recipe.chat_template is not None:
        check_chat_template(recipe.chat_template)


def check_tensor_values(recipe: Any, ref: ModelMeta | None) -> None:
    """Each step's parameters resolved for every tensor the reference's header names, by the
    merge's own rules (``TensorMerge.check``): no weight read, the same ConfigError as ``merge``.
    """
    from ..merge.methods import check_tensor_parameters, get_method, uses_base
    from ..merge.registry import MERGEKIT, method_for

    if ref is None or not ref.tensors:
        return
    for step in _steps(recipe):
        if step.is_leaf or method_for(step.method) is not MERGEKIT:  # hub-merge's own: own checks
            continue
        method = get_method(step.method)
        for params, model_params in step.merge_groups(uses_base(method)):
            check_tensor_parameters(method, params, model_params, list(ref.tensors), ref.layers)


def method_issues(recipe: Any, ref: ModelMeta | None = None) -> list[Issue]:
    try:
        check_method(recipe)
        check_tensor_values(recipe, ref)
    except HubMergeError as err:
        return [Issue(recipe.method, METHOD_ISSUE, str(err))]
    return []


def slice_issues(recipe: Any, metas: list[ModelMeta]) -> list[Issue]:
    """Each slice source's ``layer_range`` against its model's layer count (from its config)."""
    by_ref: dict[str, ModelMeta] = {}
    for m in metas:
        for key in (m.ref, m.id, str(m.folder) if m.folder else None):
            if key:
                by_ref[key] = m
    issues = []
    for i, sl in enumerate(recipe.slices):
        for j, src in enumerate(sl.sources):
            m = by_ref.get(src.model)
            if m is None and Path(src.model).exists():
                m = by_ref.get(str(Path(src.model).resolve()))
            if m is None or not m.layers:
                continue
            if src.layer_range[1] > m.layers:
                issues.append(
                    Issue(
                        m.id,
                        f"slices[{i}].sources[{j}].layer_range",
                        f"{list(src.layer_range)} reaches past its {m.layers} layers "
                        "(layer_range is [start, stop), counted from 0)",
                    )
                )
    return issues
