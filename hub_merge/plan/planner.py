"""The plan entry points: :func:`plan_models`, :func:`plan_recipe` and the search's preflight."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import HubMergeError
from .checks import method_issues, pair_issues, slice_issues, vocab_issue
from .estimate import size_estimates
from .meta import ModelMeta, read_model
from .report import Issue, MergePlan

_DEPTH_ISSUES = ("layer count", "missing tensors", "extra tensors")


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
        from ..merge.methods import get_method
        from ..merge.methods import uses_base as _uses

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
    tokens = _output_vocabulary(recipe, base, base_meta, models, metas, ref, issues)
    if ref is not None and not ref.problem:
        for m in ([base_meta] if base_meta and base_meta is not ref else []) + metas:
            if m is ref or m.problem:
                continue
            issues += pair_issues(ref, m, tokens[0] if tokens else None)
            vocab = vocab_issue(ref, m)
            if vocab is not None and tokens is None:  # a tokenizer merge aligns vocabularies
                issues.append(vocab)
    out_layers = None
    if recipe is not None and getattr(recipe, "slices", None):
        # sliced inputs may differ in depth: each source's layer_range is checked instead
        issues = [i for i in issues if i.what not in _DEPTH_ISSUES]
        issues += slice_issues(recipe, ([base_meta] if base_meta else []) + metas)
        out_layers = sum(sl.n_layers for sl in recipe.slices)
    if recipe is not None:
        issues += method_issues(recipe, ref if ref is not None and not ref.problem else None)
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
    return MergePlan(
        method,
        base_meta,
        metas,
        issues,
        size_estimates(all_inputs, ref, method, out_layers, tokens),
    )


def _output_vocabulary(
    recipe: Any,
    base: str | Path | None,
    base_meta: ModelMeta | None,
    models: Sequence[str | Path],
    metas: list[ModelMeta],
    ref: ModelMeta | None,
    issues: list[Issue],
) -> tuple[dict[str, int], int] | None:
    """(token axes, rows) of a recipe's token-indexed tensors when it builds a tokenizer, from
    the inputs' tokenizer and config files (mergekit's own tokenizer code, as the merge runs it);
    a problem building it is an issue of the plan."""
    spec = getattr(recipe, "tokenizer", None)
    if spec is None or ref is None or ref.folder is None:
        return None
    from ..merge.vocab import build_vocabulary

    folders = {str(m): meta.folder for m, meta in zip(models, metas, strict=True)}
    if base is not None and base_meta is not None:
        folders[str(base)] = base_meta.folder
    if any(f is None for f in folders.values()):
        return None

    def local(model: str) -> str:
        if model not in folders:
            raise HubMergeError(f"tokenizer: {model} is not an input of the merge.")
        return str(folders[model])

    try:
        vocab = build_vocabulary(
            spec.with_models(local),
            local(str(base)) if base is not None else None,
            list(dict.fromkeys(str(f) for f in folders.values())),
            str(ref.folder),
        )
    except HubMergeError as err:
        issues.append(Issue(recipe.method, "tokenizer", str(err)))
        return None
    return vocab.axes, vocab.size


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
