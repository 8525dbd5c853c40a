"""Read a mergekit YAML config as written (``merge_method``, ``base_model``, ``models``, ...).

mergekit's schema and hub-merge's recipe say the same things with different keys; this module
maps one onto the other so a user's existing ``mergekit-yaml`` config runs unchanged and gives
the same tensors. What the streaming engine cannot build is refused by key, never ignored.
``slices`` become the recipe's ``slices`` (merged by :mod:`.slices`):

========================  ==============================================================
mergekit key              hub-merge recipe
========================  ==============================================================
``merge_method``          ``method``
``base_model``            ``base``
``models[].model``        ``models[].model`` (``base+adapter`` becomes the adapter itself)
``models[].parameters``   ``models[].parameters`` (scalars, gradients, filter lists)
``parameters``            ``parameters``
``dtype``                 ``compute_dtype`` (mergekit computes in it; absent: the inputs')
``out_dtype``             ``dtype`` (the stored dtype; mergekit's default: ``dtype``)
``tokenizer_source``      ``tokenizer: {source: ...}`` (``base``, ``union`` or a model)
``tokenizer``             ``tokenizer`` (``source``, ``tokens``, ``pad_to_multiple_of``)
``chat_template``         ``chat_template`` (a built-in name, ``auto`` or a Jinja template)
``random_seed``           ``seed``
========================  ==============================================================

Where hub-merge and mergekit-yaml differ on purpose:

- Parameters a method does not read (``weight`` under ``slerp``; a shared one such as
  ``normalize`` set per model) are ignored by mergekit without a word; here they are dropped with
  one :class:`~hub_merge.errors.UnusedParameterWarning` naming them. A name no merge method reads
  at all (``desnity``) is refused, with the closest valid name.
- Without ``out_dtype``, mergekit stores whatever dtype the method's kernel returns. That is the
  compute ``dtype`` for every method but ``arcee_fusion``, whose kernel multiplies by a float32
  mask: ``examples/arcee_fusion.yml`` (``dtype: bfloat16``) gives float32 tensors there, under a
  config.json that says bfloat16. hub-merge stores the dtype the config names (the same numbers,
  rounded once); ``out_dtype: float32`` gives mergekit's bytes exactly.
"""

from __future__ import annotations

import warnings
from typing import Any

from ..errors import ConfigError, UnusedParameterWarning

_SUPPORTED = {
    "merge_method",
    "slices",
    "base_model",
    "models",
    "parameters",
    "dtype",
    "out_dtype",
    "tokenizer_source",
    "tokenizer",
    "chat_template",
    "random_seed",
    "name",
}
_WHY_NOT = {
    "modules": "per-module merges (`modules`) are not built by hub-merge; use `models:` or "
    "mergekit-yaml",
}


_MOE_ROUTERS = {"hidden": "hidden-mean", "cheap_embed": "embed", "random": "random"}


def is_mergekit_moe_config(data: Any) -> bool:
    """mergekit-moe configs list ``experts`` (each a ``source_model``) and name no method."""
    return (
        isinstance(data, dict)
        and "experts" in data
        and "merge_method" not in data
        and "method" not in data
    )


def moe_message(data: dict[str, Any]) -> str:
    """One line for a mergekit-moe config given to ``merge``: the ``hub-merge moe`` to run."""
    import shlex

    parts = ["hub-merge moe"]
    if isinstance(data.get("base_model"), str):
        parts += ["--base", shlex.quote(data["base_model"])]
    experts = data["experts"] if isinstance(data["experts"], list) else []
    for e in experts:
        if isinstance(e, dict) and isinstance(e.get("source_model"), str):
            prompts = e.get("positive_prompts") or []
            text = ";;".join(str(x) for x in prompts) if isinstance(prompts, list) else ""
            parts += ["--expert", shlex.quote(e["source_model"])]
            parts += ["--prompts", shlex.quote(text or "PROMPTS")]
    router = _MOE_ROUTERS.get(str(data.get("gate_mode", "hidden")))
    if router:
        parts += ["--router", router]
    if data.get("experts_per_token") is not None:
        parts += ["--top-k", str(data["experts_per_token"])]
    arch = str(data.get("architecture") or "").lower()
    for prefix, name in (("qwen3", "qwen3_moe"), ("qwen", "qwen2_moe"), ("mixtral", "mixtral")):
        if arch.startswith(prefix):
            parts += ["--output-arch", name]
            break
    shared = data.get("shared_experts")
    if isinstance(shared, list) and shared and isinstance(shared[0], dict):
        parts += ["--shared-expert", shlex.quote(str(shared[0].get("source_model")))]
    return (
        "This is a mergekit-moe config (`experts` with `source_model`): `hub-merge merge` builds "
        "one merged model; build a mixture of experts with `hub-merge moe`, e.g. "
        f"`{' '.join(parts)} --out DIR`."
    )


def is_mergekit_config(data: Any) -> bool:
    """mergekit configs name ``merge_method``; hub-merge recipes name ``method``."""
    return isinstance(data, dict) and "merge_method" in data


def _model_ref(ref: Any, base: str | None, where: str) -> str:
    if not isinstance(ref, str) or not ref.strip():
        raise ConfigError(f"{where}: a model must be a Hub id or a folder, got {ref!r}.")
    if "+" in ref:
        model, _, adapter = ref.partition("+")
        if base is None or model != base:
            raise ConfigError(
                f"{where}: {ref!r} applies a LoRA to {model!r}, which is not `base_model`; "
                "hub-merge applies adapters to the merge's base only (set base_model to "
                f"{model!r} or merge that model first)."
            )
        return adapter
    return ref


def from_mergekit(data: dict[str, Any]) -> dict[str, Any]:
    """A mergekit config mapping -> the equivalent hub-merge recipe mapping (validated later)."""
    # mergekit reads an empty `slices:` (or `parameters:`) as absent: so does hub-merge.
    data = {k: v for k, v in data.items() if v is not None}
    for key in data:
        if key in _WHY_NOT:
            raise ConfigError(f"mergekit key `{key}`: {_WHY_NOT[key]}.")
        if key not in _SUPPORTED:
            raise ConfigError(
                f"mergekit key `{key}` is not one hub-merge reads; supported keys: "
                f"{', '.join(sorted(_SUPPORTED))}."
            )
    base = data.get("base_model")
    if base is not None and not isinstance(base, str):
        raise ConfigError(f"base_model must be a Hub id or a folder, got {base!r}.")
    if base is not None and "+" in base:
        raise ConfigError(
            f"base_model {base!r} applies a LoRA to the base; merge that adapter first "
            "(hub-merge merge) and use the result as base_model."
        )
    global_params = data.get("parameters") or {}
    if not isinstance(global_params, dict):
        raise ConfigError("parameters must be a mapping of name: value.")
    method = str(data["merge_method"])
    if "slices" in data:
        if "models" in data:
            raise ConfigError("Give `models` or `slices`, not both (mergekit reads exactly one).")
        slices, global_params = _slices(method, base, data["slices"], dict(global_params))
        shape: dict[str, Any] = {"slices": slices}
    else:
        entries = _entries(data.get("models"), base)
        entries, global_params = _drop_unused(method, base, entries, dict(global_params))
        shape = {"models": entries}
    recipe: dict[str, Any] = {"method": data["merge_method"], **shape}
    tokenizer = _tokenizer(data)
    if tokenizer is not None:
        recipe["tokenizer"] = tokenizer
    if data.get("chat_template") is not None:
        if not isinstance(data["chat_template"], str):
            raise ConfigError("chat_template must be a template name, `auto` or a Jinja template.")
        recipe["chat_template"] = data["chat_template"]
    if base is not None:
        recipe["base"] = base
    if global_params:
        recipe["parameters"] = global_params
    compute = data.get("dtype")
    recipe["compute_dtype"] = compute if compute is not None else "input"
    out = data.get("out_dtype", compute)
    if out is not None:
        recipe["dtype"] = out
    if data.get("random_seed") is not None:
        recipe["seed"] = data["random_seed"]
    return recipe


def _tokenizer(data: dict[str, Any]) -> dict[str, Any] | None:
    """``tokenizer_source`` / ``tokenizer`` as the recipe's ``tokenizer`` (mergekit reads one)."""
    source, spec = data.get("tokenizer_source"), data.get("tokenizer")
    if source is not None and spec is not None:
        raise ConfigError(
            "Give `tokenizer_source` or `tokenizer`, not both (mergekit refuses both too)."
        )
    if source is not None:
        spec = {"source": source}
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise ConfigError("tokenizer must be a mapping (source, tokens, pad_to_multiple_of).")
    spec = dict(spec)
    src = spec.get("source", "union")
    if not isinstance(src, str) or not src.strip():
        raise ConfigError(f"tokenizer source {src!r}: give `base`, `union` or a model.")
    if src not in ("base", "union"):  # mergekit loads `model+lora`'s tokenizer from the model
        spec["source"] = src.partition("+")[0]
    return spec


def _entries(models: Any, base: str | None) -> list[dict[str, Any]]:
    """``models:`` as recipe entries (a bare string is ``{model: ...}``)."""
    if not isinstance(models, list) or not models:
        raise ConfigError("models: list at least one model (`- model: org/name`).")
    entries = []
    for i, item in enumerate(models):
        where = f"models[{i}]"
        if isinstance(item, str):
            item = {"model": item}
        if not isinstance(item, dict) or "model" not in item:
            raise ConfigError(f"{where}: each entry needs `model:` (a Hub id or a folder).")
        extra = sorted(set(item) - {"model", "parameters"})
        if extra:
            raise ConfigError(f"{where}: unsupported key(s) {', '.join(extra)}; use `parameters`.")
        entry: dict[str, Any] = {"model": _model_ref(item["model"], base, where)}
        if item.get("parameters"):
            if not isinstance(item["parameters"], dict):
                raise ConfigError(f"{where}.parameters must be a mapping of name: value.")
            entry["parameters"] = item["parameters"]
        entries.append(entry)
    return entries


def _slices(
    method_name: str, base: str | None, slices: Any, global_params: dict[str, Any]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``slices:`` as recipe slices; unused parameters dropped with one warning, as for models.

    mergekit reads each source's ``parameters`` like a model's, then the slice's, then the
    global ones. A slice's own ``base_model`` or ``residual_weight`` is refused by name.
    """
    from .methods import get_method, refuse_unknown_names, unused_message, unused_parameters

    if not isinstance(slices, list) or not slices:
        raise ConfigError("slices: list at least one slice (`- sources: [...]`).")
    method = get_method(method_name)
    known = {p.name for p in method.spec.parameters}
    per_model = known - {p.name for p in method.spec.parameters if p.scope.value == "shared"}
    unused: dict[str, list[str]] = {}
    out = []
    for i, sl in enumerate(slices):
        where = f"slices[{i}]"
        if not isinstance(sl, dict) or not isinstance(sl.get("sources"), list):
            raise ConfigError(f"{where}: each slice needs `sources:` (model and layer_range each).")
        extra = sorted(set(sl) - {"sources", "parameters"})
        if extra:
            raise ConfigError(
                f"{where}: {', '.join(extra)} is not built by hub-merge (a slice's own "
                "base_model or residual_weight); set base_model once for the config."
            )
        params = dict(sl.get("parameters") or {})
        sources = []
        for j, src in enumerate(sl["sources"]):
            at = f"{where}.sources[{j}]"
            if not isinstance(src, dict) or "model" not in src or "layer_range" not in src:
                raise ConfigError(
                    f"{at}: a source needs `model:` and `layer_range: [start, stop]`."
                )
            extra = sorted(set(src) - {"model", "layer_range", "parameters"})
            if extra:
                raise ConfigError(f"{at}: unsupported key(s) {', '.join(extra)}.")
            if "+" in str(src["model"]):
                raise ConfigError(f"{at}: a LoRA (`model+lora`) cannot be sliced; merge it first.")
            sources.append(
                {
                    "model": src["model"],
                    "layer_range": src["layer_range"],
                    "parameters": dict(src.get("parameters") or {}),
                }
            )
        refuse_unknown_names(method, params, [s["parameters"] for s in sources])
        found = unused_parameters(method, params, [s["parameters"] for s in sources])
        for name, places in found.items():
            for place in places:  # "parameters" or "models[j].parameters", in slice terms
                place = (
                    f"{where}.sources[" + place[len("models[") :]
                    if place != "parameters"
                    else f"{where}.parameters"
                )
                unused.setdefault(name, []).append(place)
        for s_ in sources:
            s_["parameters"] = {k: v for k, v in s_["parameters"].items() if k in per_model}
        out.append(
            {"sources": sources, "parameters": {k: v for k, v in params.items() if k in known}}
        )
    refuse_unknown_names(method, global_params, [])
    for name in unused_parameters(method, global_params, []):
        unused.setdefault(name, []).append("parameters")
    if unused:
        warnings.warn(unused_message(method, unused), UnusedParameterWarning, stacklevel=5)
    return out, {k: v for k, v in global_params.items() if k in known}


def _drop_unused(
    method_name: str, base: str | None, entries: list[dict[str, Any]], global_params: dict
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Entries and global parameters as mergekit reads them, with one warning for the rest.

    mergekit keys inputs by model, so a ``models`` entry that is the base itself is the same
    input as the base: methods that take the base drop the duplicate, exactly as mergekit does,
    and the base then gets only input-scoped parameters. Parameters the method does not read
    (``weight`` under ``slerp``; ``normalize`` set per model where it is shared) are ignored by
    mergekit; they are dropped here and named once, so the recipe (and its card) says only what
    was used.
    """
    from .methods import (
        get_method,
        refuse_unknown_names,
        unused_message,
        unused_parameters,
        uses_base,
    )

    method = get_method(method_name)
    refuse_unknown_names(method, global_params, [e.get("parameters", {}) for e in entries])
    unused: dict[str, list[str]] = {}
    kept: list[tuple[int, dict[str, Any]]] = list(enumerate(entries))
    if base is not None and uses_base(method):
        input_scoped = {p.name for p in method.spec.parameters if p.scope.value == "input"}
        for i, e in kept:
            if e["model"] == base:
                for name in e.get("parameters", {}):
                    if name not in input_scoped:
                        unused.setdefault(name, []).append(f"models[{i}] (the base_model)")
        kept = [(i, e) for i, e in kept if e["model"] != base]
        if not kept:
            raise ConfigError("models: list at least one model besides base_model.")
    found = unused_parameters(method, global_params, [e.get("parameters", {}) for _, e in kept])
    for name, places in found.items():
        for place in places:  # renumber "models[j]" (of the kept) as the config's own index
            if place.startswith("models["):
                j = int(place[len("models[") : place.index("]")])
                place = f"models[{kept[j][0]}].parameters"
            unused.setdefault(name, []).append(place)
    known = {p.name for p in method.spec.parameters}
    per_model = known - {p.name for p in method.spec.parameters if p.scope.value == "shared"}
    out_entries = []
    for _, e in kept:
        e = dict(e)
        params = {k: v for k, v in e.pop("parameters", {}).items() if k in per_model}
        if params:
            e["parameters"] = params
        out_entries.append(e)
    out_global = {k: v for k, v in global_params.items() if k in known}
    if unused:
        warnings.warn(unused_message(method, unused), UnusedParameterWarning, stacklevel=4)
    return out_entries, out_global
