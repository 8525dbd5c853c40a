"""Merge methods: mergekit's registry, parameter checks, per-tensor parameter resolution.

The arithmetic is mergekit's (``mergekit.merge_methods.api.merge_tensors``); this module only
(1) finds a method by name and refuses unknown methods/parameters early, naming the valid ones,
(2) resolves each parameter for one tensor from the recipe's settings (per-model settings first,
then global ones; filters and layer gradients evaluated by mergekit's own ``evaluate_setting``),
and (3) calls ``merge_tensors`` with a deterministic per-tensor seed for random methods, passing the
task-arithmetic methods' fast variant from :mod:`.kernels` unless mergekit's exact arithmetic is
asked for.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from mergekit import merge_methods
from mergekit.merge_methods.base import BasePolicy, MergeMethod, ParameterScope
from mergekit.sparsify import SparsificationMethod

from ..errors import (
    ConfigError,
    IncompatibleModelsError,
    MergeError,
    UnknownMethodError,
    UnusedParameterWarning,
)
from ..layers import layer_position
from .kernels import arithmetic_label, fast_method
from .recipe import RANDOM_METHODS, Condition  # noqa: F401 (re-exported)


def available_methods() -> list[str]:
    """Names of every merge method mergekit registers (all usable by hub-merge)."""
    return sorted(m.spec.name for m in merge_methods.registered_methods())


def get_method(name: str) -> MergeMethod:
    """Look a method up by name; unknown names raise :class:`UnknownMethodError` listing all."""
    try:
        return merge_methods.get(name)
    except (RuntimeError, KeyError):
        raise UnknownMethodError(
            f"Unknown merge method {name!r}. Valid methods: {', '.join(available_methods())}."
        ) from None


def parameter_names(method: MergeMethod) -> list[str]:
    return [p.name for p in method.spec.parameters]


def needs_base(method: MergeMethod) -> bool:
    return method.spec.contract.base == BasePolicy.REQUIRED


def uses_base(method: MergeMethod) -> bool:
    """Whether the base is one of the method's inputs (required or optional)."""
    return method.spec.contract.base in (BasePolicy.REQUIRED, BasePolicy.OPTIONAL)


@functools.cache
def _names_any_method_reads() -> frozenset[str]:
    return frozenset(p.name for m in merge_methods.registered_methods() for p in m.spec.parameters)


def unused_parameters(
    method: MergeMethod,
    global_params: Mapping[str, Any],
    model_params: Sequence[Mapping[str, Any]],
) -> dict[str, list[str]]:
    """Parameter name -> the places that set it where ``method`` never reads it.

    mergekit resolves only the parameters a method declares, and a shared one (``t``,
    ``normalize``, ...) only from the global ``parameters``: everything else is ignored, never
    refused. This lists exactly those, in mergekit's own scopes, so they can be named once.
    """
    spec = method.spec
    known = {p.name for p in spec.parameters}
    shared = {p.name for p in spec.parameters if p.scope == ParameterScope.SHARED}
    out: dict[str, list[str]] = {}
    for name in global_params:
        if name not in known:
            out.setdefault(name, []).append("parameters")
    for i, params in enumerate(model_params):
        for name in params:
            if name not in known or name in shared:
                out.setdefault(name, []).append(f"models[{i}].parameters")
    return out


def unused_message(method: MergeMethod, unused: Mapping[str, Sequence[str]]) -> str:
    """The one warning for ``unused``: each name once, where it was set, what the method reads."""
    spec = method.spec
    what = "; ".join(f"{name} (in {', '.join(where)})" for name, where in sorted(unused.items()))
    shared = sorted(p.name for p in spec.parameters if p.scope == ParameterScope.SHARED)
    valid = ", ".join(sorted(parameter_names(method))) or "(none)"
    note = f" ({', '.join(shared)} only in the global `parameters`)" if shared else ""
    return (
        f"Ignoring parameter(s) that method {spec.name!r} does not use, as mergekit does: "
        f"{what}. Valid parameters: {valid}{note}."
    )


def warn_unused(
    method: MergeMethod,
    global_params: Mapping[str, Any],
    model_params: Sequence[Mapping[str, Any]],
) -> None:
    """Warn (once per message and process: Python's default filter) about unused parameters.

    The warning is attributed to this line (stacklevel 1), not to the caller: plan and merge
    both check a recipe, and the default filter shows a message once per place it comes from.
    """
    unused = unused_parameters(method, global_params, model_params)
    if unused:
        warnings.warn(unused_message(method, unused), UnusedParameterWarning, stacklevel=1)


def refuse_unknown_names(
    method: MergeMethod,
    global_params: Mapping[str, Any],
    model_params: Sequence[Mapping[str, Any]],
) -> None:
    """Refuse parameter names that no merge method reads (typos), naming the closest one."""
    everyone = _names_any_method_reads()
    for where, params in [("parameters", global_params)] + [
        (f"models[{i}].parameters", p) for i, p in enumerate(model_params)
    ]:
        unknown = sorted(set(params) - everyone)
        if unknown:
            close = [difflib.get_close_matches(u, sorted(everyone), n=1) for u in unknown]
            hint = "".join(f" (did you mean {c[0]!r}?)" for c in close if c)
            raise UnknownMethodError(
                f"Unknown parameter(s) {', '.join(unknown)} in {where}: no merge method reads "
                f"{'it' if len(unknown) == 1 else 'them'}{hint}. Valid parameters: "
                f"{', '.join(sorted(parameter_names(method))) or '(none)'} (method "
                f"{method.spec.name!r})."
            )


def validate_parameters(
    method: MergeMethod,
    global_params: Mapping[str, Any],
    model_params: Sequence[Mapping[str, Any]],
    *,
    n_inputs: int,
    has_base: bool,
    refuse_unused: bool = False,
) -> None:
    """Refuse missing required parameters and bad input counts before any work.

    Parameters the method does not read are warned about and ignored, as mergekit ignores them
    (a config written for mergekit-yaml runs as written), or refused with ``refuse_unused`` (a
    search's own settings, where such a parameter can only be a mistake). Names no merge method
    reads at all are always refused: a typo such as ``desnity`` would merge at the default.
    """
    refuse_unknown_names(method, global_params, model_params)
    if refuse_unused:
        unused = unused_parameters(method, global_params, model_params)
        if unused:
            raise UnknownMethodError(
                unused_message(method, unused).replace("Ignoring", "Unknown", 1)
                + " Drop them from the settings."
            )
    else:
        warn_unused(method, global_params, model_params)
    spec = method.spec
    for p in spec.parameters:
        if not p.required:
            continue
        if p.scope == ParameterScope.SHARED:
            if p.name not in global_params:
                raise ConfigError(
                    f"Method {spec.name!r} needs parameter {p.name!r} (global `parameters`)."
                )
        else:
            for i, mp in enumerate(model_params):
                if p.name not in mp and p.name not in global_params:
                    raise ConfigError(
                        f"Method {spec.name!r} needs {p.name!r} for every model; models[{i}] has none "
                        "(set it per model or globally)."
                    )
    if needs_base(method) and not has_base:
        raise ConfigError(f"Method {spec.name!r} needs a base model (`base:`).")
    ids = [f"m{i}" for i in range(n_inputs)]
    base_id = None
    if has_base and uses_base(method):
        ids = ["base", *ids]
        base_id = "base"
    try:
        method.validate_inputs(ids, base_id)
    except (ValueError, TypeError, RuntimeError) as err:
        raise ConfigError(f"Method {spec.name!r}: {err}") from None


def layer_t(name: str, num_layers: int | None) -> float:
    """Position of a tensor's layer in [0, 1], as mergekit computes gradients; 0 outside layers.

    The block index comes from the one shared parser (:mod:`hub_merge.layers`), so ``h.N``
    (GPT-2 style) names get their gradient value as ``model.layers.N`` names do.
    """
    return layer_position(name, num_layers)


def _as_mergekit_setting(value: Any) -> Any:
    from mergekit.config import ConditionalParameter

    if isinstance(value, list) and value and isinstance(value[0], (Condition, Mapping)):
        return [
            ConditionalParameter(**(c.model_dump() if isinstance(c, Condition) else dict(c)))
            for c in value
        ]
    return value


def _evaluate(name: str, setting: Any, t: float, validate: Any) -> Any:
    """mergekit's ``evaluate_setting``; a scalar is only validated, which is all it does with one.

    Why the shortcut: importing ``mergekit.config`` pulls in peft and transformers (seconds of a
    merge's start-up, more than a small linear merge takes); only gradients and filters need it.
    """
    if isinstance(setting, (float, int, bool, str)):
        return validate(setting)
    from mergekit.config import evaluate_setting

    return evaluate_setting(name, _as_mergekit_setting(setting), t, validate=validate)


def resolve(
    method: MergeMethod,
    name: str,
    t: float,
    global_params: Mapping[str, Any],
    model_params: Sequence[Mapping[str, Any]],
    outer_params: Sequence[Mapping[str, Any]] = (),
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Parameter values for one tensor: (shared values, one dict per non-base input).

    Precedence as in mergekit: a model's own settings, then the global ones (for a slice: the
    slice's, then the config's, ``outer_params``), then the default. A scope whose value is a
    filter list that matches nothing for this tensor falls through to the next, as mergekit's
    ``ConfigReader.parameter`` does.
    """
    shared: dict[str, Any] = {}
    per_model: list[dict[str, Any]] = [{} for _ in model_params]
    for p in method.spec.parameters:

        def value_from(*scopes: Mapping[str, Any], p=p) -> Any:
            for scope in scopes:
                if p.name in scope:
                    v = _evaluate(name, scope[p.name], t, p.validate)
                    if v is not None:
                        return v
            if p.required:
                raise ConfigError(
                    f"No value of {p.name!r} for tensor {name!r} (no filter matched)."
                )
            return p.validate(p.default)

        if p.scope == ParameterScope.SHARED:
            shared[p.name] = value_from(global_params, *outer_params)
        else:
            for i, mp in enumerate(model_params):
                per_model[i][p.name] = value_from(mp, global_params, *outer_params)
    return shared, per_model


def check_tensor_parameters(
    method: MergeMethod,
    global_params: Mapping[str, Any],
    model_params: Sequence[Mapping[str, Any]],
    names: Iterable[str],
    num_layers: int | None,
    outer_params: Sequence[Mapping[str, Any]] = (),
) -> None:
    """See :meth:`TensorMerge.check`: the same resolution as the merge, for every tensor name."""
    della = getattr(method, "sparsification_method", None) == SparsificationMethod.della_magprune
    for name in names:
        try:
            _, per_model = resolve(
                method, name, layer_t(name, num_layers), global_params, model_params, outer_params
            )
        except ValueError as err:  # pydantic's ValidationError too: a value of the wrong type
            if isinstance(err, ConfigError):
                raise
            first = str(err).strip().splitlines()
            raise ConfigError(
                f"Method {method.spec.name!r}, tensor {name!r}: a parameter value is invalid "
                f"({' '.join(first[:3]) if first else type(err).__name__})."
            ) from None
        if not della:
            continue
        for i, values in enumerate(per_model):
            density, epsilon = values["density"], values["epsilon"]
            if 0 < density < 1 and not (0 < density - epsilon and density + epsilon < 1):
                raise ConfigError(
                    f"Method {method.spec.name!r}: models[{i}] has density {density:g} and "
                    f"epsilon {epsilon:g} for tensor {name!r}, but DELLA needs density - epsilon "
                    f"> 0 and density + epsilon < 1; set epsilon below "
                    f"{min(density, 1 - density):g}."
                )


def tensor_seed(seed: int, name: str) -> int:
    """Deterministic per-tensor seed: results do not depend on tensor order or threads."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


@dataclass
class TensorMerge:
    """Everything needed to merge one tensor with a method (resolved per tensor)."""

    method: MergeMethod
    global_params: Mapping[str, Any]
    model_params: Sequence[Mapping[str, Any]]
    num_layers: int | None = None
    seed: int | None = None
    # mergekit's `dtype`: float32 by default; None computes in the inputs' dtype (as mergekit
    # does when its config names none), so a bf16 config gives mergekit's bf16 tensors.
    compute_dtype: torch.dtype | None = torch.float32
    exact_mergekit: bool = False
    # scopes read after ``global_params`` (a slice's merge: the config's global parameters)
    outer_params: Sequence[Mapping[str, Any]] = ()

    def check(self, names: Iterable[str]) -> None:
        """Resolve every tensor's parameters and check what the method would refuse mid-merge.

        Run before a weight is read (by ``plan`` on the safetensors headers' names, and by
        ``merge_to_folder``), so a value mergekit's kernel raises on (DELLA's ``epsilon`` outside
        ``(0, min(density, 1 - density))``, a value of the wrong type in a filter) is a one-line
        :class:`ConfigError` naming the parameter and a tensor, not a traceback halfway through.
        """
        check_tensor_parameters(
            self.method,
            self.global_params,
            self.model_params,
            names,
            self.num_layers,
            self.outer_params,
        )

    @property
    def kernel(self) -> MergeMethod:
        """The method that runs: the fast variant for float32 task arithmetic, else mergekit's."""
        if self.exact_mergekit or self.compute_dtype != torch.float32:
            return self.method
        return fast_method(self.method)

    @property
    def arithmetic(self) -> str:
        """Whose arithmetic runs (recorded in the output's metadata for the card)."""
        return arithmetic_label(self.kernel)

    def __call__(
        self,
        name: str,
        models: Sequence[torch.Tensor],
        base: torch.Tensor | None,
        *,
        out_dtype: torch.dtype | None = None,
        t: float | None = None,
    ) -> torch.Tensor:
        """Merge one tensor (in ``compute_dtype``); ``base`` joins only if the method uses it.

        ``t`` is the position gradients are read at (default: the tensor's layer in the model;
        a slice passes the layer's position within the slice, as mergekit does).

        Task-arithmetic methods (ties, dare, breadcrumbs, della) computed in float32 use
        :mod:`.kernels`' linear-time sparsification unless ``exact_mergekit``; everything else
        is mergekit's own arithmetic.
        """
        where = layer_t(name, self.num_layers) if t is None else t
        shared, per_model = resolve(
            self.method, name, where, self.global_params, self.model_params, self.outer_params
        )
        ids: list[str] = [f"m{i}" for i in range(len(models))]
        tensors = list(models)
        base_index = None
        if base is not None and uses_base(self.method):
            ids.insert(0, "base")
            tensors.insert(0, base)
            base_index = 0
        params: dict[str, Any] = dict(shared)
        for p in self.method.spec.input_parameters:
            values = {
                ids[i + (base_index is not None)]: per_model[i][p.name] for i in range(len(models))
            }
            if p.scope == ParameterScope.INPUT and base_index is not None:
                values["base"] = p.validate(p.default) if not p.required else 0.0
            params[p.name] = values
        shapes = {tuple(x.shape) for x in tensors}
        if len(shapes) != 1:
            raise IncompatibleModelsError(
                f"Tensor {name!r} has different shapes across inputs: {sorted(shapes)}. "
                + ("Different vocabularies? " if "embed" in name or "lm_head" in name else "")
                + "Only models of one architecture and size can be merged."
            )
        if self.seed is not None:
            torch.manual_seed(tensor_seed(self.seed, name))
        try:
            return merge_methods.merge_tensors(
                tensors,
                self.kernel,
                parameters=params,
                ids=ids,
                base_index=base_index,
                name=name,
                dtype=self.compute_dtype,
                out_dtype=out_dtype,
            )
        except ValueError as err:  # what only the weights reveal (multislerp's zero mean, ...)
            first = str(err).strip().splitlines()
            raise MergeError(
                f"Method {self.method.spec.name!r} failed on tensor {name!r}: "
                f"{first[0] if first else type(err).__name__}"
            ) from None
