"""Read a mergekit YAML config as written (``merge_method``, ``base_model``, ``models``, ...).

mergekit's schema and hub-merge's recipe say the same things with different keys; this module
maps one onto the other so a user's existing ``mergekit-yaml`` config runs unchanged and gives
the same tensors. What the streaming engine cannot build is refused by key, never ignored:

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
``tokenizer_source``      accepted when it names the base (``base`` or the base's id)
``random_seed``           ``seed``
========================  ==============================================================
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError

_SUPPORTED = {
    "merge_method",
    "base_model",
    "models",
    "parameters",
    "dtype",
    "out_dtype",
    "tokenizer_source",
    "random_seed",
    "name",
}
_WHY_NOT = {
    "slices": "layer slicing (`slices`, as used by `passthrough` frankenmerges) is not built by "
    "hub-merge's streaming engine; express the merge with `models:` or run it with mergekit-yaml",
    "modules": "per-module merges (`modules`) are not built by hub-merge; use `models:` or "
    "mergekit-yaml",
    "tokenizer": "tokenizer surgery (`tokenizer`) is not supported; hub-merge keeps the base's "
    "tokenizer (drop the key)",
    "chat_template": "`chat_template` is not supported; hub-merge copies the base's tokenizer "
    "files (drop the key, or set the template on the result)",
}


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
    models = data.get("models")
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
            entry["parameters"] = item["parameters"]
        entries.append(entry)
    # mergekit keys inputs by model, so a `models` entry that is the base itself is the same input
    # as the base: methods that take the base drop the duplicate, exactly as mergekit does.
    from .methods import get_method, uses_base

    if base is not None and uses_base(get_method(str(data["merge_method"]))):
        entries = [e for e in entries if e["model"] != base]
        if not entries:
            raise ConfigError("models: list at least one model besides base_model.")
    tok = data.get("tokenizer_source")
    if tok is not None and tok != "base" and tok != base:
        raise ConfigError(
            f"tokenizer_source {tok!r}: hub-merge keeps the base's tokenizer; set it to `base` "
            "(or drop it) - vocabulary unions are not supported."
        )
    recipe: dict[str, Any] = {"method": data["merge_method"], "models": entries}
    if base is not None:
        recipe["base"] = base
    if data.get("parameters"):
        recipe["parameters"] = data["parameters"]
    compute = data.get("dtype")
    recipe["compute_dtype"] = compute if compute is not None else "input"
    out = data.get("out_dtype", compute)
    if out is not None:
        recipe["dtype"] = out
    if data.get("random_seed") is not None:
        recipe["seed"] = data["random_seed"]
    return recipe
