"""In-place candidates: one model on the device, each candidate applied to it and then undone.

Scoring a merge through ``MergeSession.merge`` + ``to_model`` builds a whole new state dict and
copies it into the model: for a search over LoRA experts that is a full model of arithmetic and
memory traffic per candidate, when only the adapted modules change. Most search candidates are
*affine combinations* of the experts (the uniform average, task arithmetic, Model Swarms'
particles, evolve's linear/task-arithmetic samples), and those can be written straight into the
one model that scores them::

    W = β·W_base + Σ_full γ_j·W_j + Σ_adapter δ_j·s_j·B_j·A_j        (per tensor, float32)

- a LoRA term costs one low-rank product per adapted module (``addmm`` of the stacked factors);
  modules no adapter touches are not touched at all (β = 1 there);
- a full-model term adds its tensors into the model's own;
- after scoring, every touched tensor is copied back from the session's pinned base copy
  (``MergeSession.base``, which the session keeps anyway), so the model is the base again
  **bit for bit**, and no candidate ever allocates a state dict.

Which recipes go in place is decided here, by the recipe alone (:meth:`InPlaceModel.plan`):
``linear`` and ``task_arithmetic`` with only weights (scalars, gradients or filters), ``normalize``
and ``lambda``; ``lora_factor_sum`` (factor-wise adapter mixes); and a single expert. The other
per-tensor methods (TIES, DARE, DELLA, breadcrumbs, SLERP, nuslerp...) have no affine form: they
run their own kernel on the touched modules only (:mod:`.inplace_kernels`). Nested recipes and
another output or compute dtype return None, and the caller uses the merge path. The paths give
the same model up to float32 rounding (tests compare scores to 1e-5).

Written by hand: neither peft (which merges one adapter set into a module and unmerges it with a
subtraction, not exactly) nor mergekit (which returns new tensors) applies a weighted combination
in place and restores it exactly.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from .inplace_kernels import KernelPlan, kernel_plan
from .memory import MergeSession, ModelHandle
from .methods import get_method, layer_t, resolve
from .recipe import MergeRecipe
from .registry import method_for

AFFINE_METHODS = {
    # method -> the parameters an in-place apply understands (anything else: merge path)
    "linear": {"weight", "normalize"},
    "task_arithmetic": {"weight", "normalize", "lambda"},
}
LEAF_METHOD = "passthrough"


@dataclass
class InPlaceTerm:
    """One input of an affine candidate: a full state dict or a factored adapter."""

    source: str
    handle: ModelHandle


@dataclass
class InPlacePlan:
    """How to write one candidate into the model (built by :meth:`InPlaceModel.plan`).

    ``coefficients(name)`` gives (β, [(term index, coefficient)]) for one tensor; for a factor
    mix, ``mix_weights`` is set instead, with ``mix()`` giving the loaded mixer (its ``modules``
    and ``mix(weights)``: low-rank factors per tensor, scale 1).
    """

    recipe: MergeRecipe
    terms: list[InPlaceTerm]
    coefficients: Callable[[str], tuple[float, list[float]]] | None = None
    mix_weights: list[float] | None = None
    mix: Callable[[], Any] | None = None
    why: str = ""
    kernel: KernelPlan | None = None  # a non-affine method, merged module by module


@dataclass
class _AdapterCache:
    """An adapter's factors on the device, float32, scale folded into B; dense deltas where needed."""

    lowrank: dict[str, tuple[torch.Tensor, torch.Tensor, bool]] = field(default_factory=dict)
    dense: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def names(self) -> set[str]:
        return set(self.lowrank) | set(self.dense)


class InPlaceModel:
    """The one scoring model of a search, with candidates applied in place and undone exactly.

    Args:
        session: the search's ``MergeSession`` (its base copy is what every restore copies from).
        load: recipe model string -> loaded ``ModelHandle``, cached by the caller (default:
            ``session.load`` of the string as a folder, cached here).
        base_source: the recipe string that names the session's base (a task-vector base).
    """

    def __init__(
        self,
        session: MergeSession,
        *,
        load: Callable[[str], ModelHandle] | None = None,
        base_source: str | None = None,
    ) -> None:
        self.session = session
        self.base_source = base_source
        self._load = load
        self._handles: dict[str, ModelHandle] = {}
        self._adapters: dict[str, _AdapterCache] = {}
        # inputs a registered method keeps loaded between candidates (a factor mix's adapters)
        self.method_cache: dict[str, Any] = {}
        self.model = session.to_model(session.base.state)
        live = self.model.state_dict(keep_vars=False)
        self.targets: dict[str, torch.Tensor] = {}
        seen: set[int] = set()
        for name in session.names:
            t = live.get(name)
            if t is None or not t.is_floating_point():
                continue
            ptr = t.data_ptr()
            if ptr in seen:  # a tied tensor (lm_head = embed_tokens) is written once
                continue
            seen.add(ptr)
            self.targets[name] = t
        self.applications = 0
        self.touched_last = 0

    # --- inputs --------------------------------------------------------------------------

    def handle(self, source: str) -> ModelHandle:
        """The loaded input a recipe names (cached by the caller's ``load``, or here)."""
        if self._load is not None:  # the caller caches (a search backend's memory budget)
            return self._load(source)
        found = self._handles.get(source)
        if found is None:
            found = self._handles[source] = self.session.load(source, label=source)
        return found

    def _is_base(self, source: str) -> bool:
        if self.base_source is not None and source == self.base_source:
            return True
        bp = self.session.base_path
        return bp is not None and Path(source) == bp

    def _adapter(self, term: InPlaceTerm) -> _AdapterCache:
        cache = self._adapters.get(term.source)
        if cache is not None:
            return cache
        reader = term.handle.source.adapter  # type: ignore[attr-defined]
        cache = _AdapterCache()
        device = self.session.device
        plain = set(reader.plain_names())
        for name in reader.names:
            if name not in self.targets:
                continue
            if name in plain:
                f = reader.lowrank(name, device=device)
                cache.lowrank[name] = (f.A, f.B, f.transpose)
            else:  # modules_to_save / saved base_layer / lora_bias: a dense delta, kept once
                delta = reader.delta(name, self.session.base.state[name], dtype=torch.float32)
                if delta is not None:
                    cache.dense[name] = delta.to(device)
        self._adapters[term.source] = cache
        return cache

    # --- planning ------------------------------------------------------------------------

    def plan(self, recipe: MergeRecipe) -> InPlacePlan | None:
        """The in-place form of ``recipe``, or None when it must go through the merge path.

        The recipe's method entry decides (mergekit's: its affine form, else its kernel applied
        module by module; hub-merge's own methods: theirs, or None).
        """
        if recipe.dtype is not None and getattr(torch, recipe.dtype) != self.session.dtype:
            return None
        if recipe.compute_dtype not in (None, "float32"):
            return None
        if any(not isinstance(e.model, str) for e in recipe.models):
            return None  # nested recipe: its inputs are merges
        if recipe.base is not None and not isinstance(recipe.base, str):
            return None
        return method_for(recipe.method).in_place(self, recipe)

    def kernel_plan(self, recipe: MergeRecipe) -> InPlacePlan | None:
        """A per-tensor mergekit method (TIES, DARE, SLERP...) merged module by module with the
        merge path's own kernel (``inplace_kernels``); None when the method has no such form."""
        kernel = kernel_plan(
            recipe,
            session=self.session,
            handle=self.handle,
            is_base=self._is_base,
            targets=self.targets,
        )
        if kernel is None:
            return None
        return InPlacePlan(recipe, [], kernel=kernel, why=f"{recipe.method} kernel")

    def affine_plan(self, recipe: MergeRecipe) -> InPlacePlan | None:
        """mergekit's affine methods in place: an expert, ``linear``, ``task_arithmetic``.

        Called by :meth:`plan` (after its checks) through mergekit's registry entry.
        """
        entries = recipe.models
        if recipe.method == LEAF_METHOD:
            if len(entries) != 1 or entries[0].parameters or recipe.parameters or recipe.base:
                return None
            terms = [InPlaceTerm(entries[0].model, self.handle(entries[0].model))]
            beta = 1.0 if terms[0].handle.is_adapter else 0.0  # an adapter is W_base + Δ
            return InPlacePlan(recipe, terms, coefficients=lambda _n: (beta, [1.0]), why="expert")
        allowed = AFFINE_METHODS.get(recipe.method)
        if allowed is None:
            return None
        if set(recipe.parameters) - allowed or any(set(e.parameters) - allowed for e in entries):
            return None
        method = get_method(recipe.method)
        if recipe.method == "task_arithmetic":
            if recipe.base is None or not self._is_base(recipe.base):
                return None  # a task vector against another base: not this session's deltas
        terms: list[InPlaceTerm] = []
        base_rows: list[int] = []  # entries that name the base itself (linear over base + experts)
        for i, e in enumerate(entries):
            if self._is_base(e.model):
                base_rows.append(i)
            else:
                terms.append(InPlaceTerm(e.model, self.handle(e.model)))
        model_rows = [i for i in range(len(entries)) if i not in base_rows]
        global_params = dict(recipe.parameters)
        model_params = [dict(e.parameters) for e in entries]
        n_layers = self.session.num_layers
        memo: dict[tuple[Any, ...], tuple[float, list[float]]] = {}
        constant = _all_scalar(global_params) and all(_all_scalar(p) for p in model_params)
        adapters = [t.handle.is_adapter for t in terms]
        any_full = not all(adapters)
        is_linear = recipe.method == "linear"

        def coefficients(name: str) -> tuple[float, list[float]]:
            key = () if constant else (name,)
            if key in memo:
                return memo[key]
            shared, per = resolve(
                method, name, layer_t(name, n_layers), global_params, model_params
            )
            w = [float(per[i]["weight"]) for i in range(len(entries))]
            normalize = bool(shared.get("normalize"))
            if is_linear:
                # W = Σ c_i W_i; an adapter's W_i = W_base + Δ_i, the base's own row is W_base
                total = math.fsum(w)
                if normalize and total == 0:
                    raise ConfigError(f"linear weights of {name!r} sum to 0: nothing to divide by.")
                c = [x / total if normalize else x for x in w]
                # full terms enter as W_j; adapter terms as Δ_j (their base part is in β)
                coefs = [c[row] for row in model_rows]
                beta = math.fsum(
                    [c[i] for i in base_rows]
                    + [c[row] for row, a in zip(model_rows, adapters, strict=True) if a]
                )
                if normalize and not any_full and abs(beta - 1.0) < 1e-12:
                    beta = 1.0  # Σ c = 1: untouched modules stay the base's (rounding only)
            else:
                # W = W_base + λ/(Σw if normalize) Σ w_i (W_i − W_base); the base's row adds 0
                total = math.fsum(w)
                scale = float(shared.get("lambda", 1.0))
                if normalize and abs(total) >= 1e-8:
                    scale /= total
                coefs = [scale * w[row] for row in model_rows]
                beta = 1.0 - math.fsum([c for c, a in zip(coefs, adapters, strict=True) if not a])
            memo[key] = (beta, coefs)
            return memo[key]

        return InPlacePlan(recipe, terms, coefficients=coefficients, why=recipe.method)

    # --- applying ------------------------------------------------------------------------

    def _touched(self, plan: InPlacePlan) -> list[str]:
        if plan.kernel is not None:
            return plan.kernel.touched
        if plan.mix is not None:
            return [n for n in plan.mix().modules if n in self.targets]
        assert plan.coefficients is not None
        out = []
        adapter_names = [
            self._adapter(t).names if t.handle.is_adapter else None for t in plan.terms
        ]
        any_full = any(n is None for n in adapter_names)
        for name in self.targets:
            beta, coefs = plan.coefficients(name)
            if any_full or beta != 1.0:
                out.append(name)
                continue
            if any(
                c != 0.0 and name in names for c, names in zip(coefs, adapter_names, strict=True)
            ):  # type: ignore[operator]
                out.append(name)
        return out

    def _write(self, name: str, plan: InPlacePlan, mixed: Mapping[str, Any] | None) -> None:
        target = self.targets[name]
        base = self.session.base.state[name]
        # float32 models are updated in place; others in a float32 scratch, rounded once
        work = target if target.dtype == torch.float32 else base.to(torch.float32)
        if mixed is not None:
            f = mixed[name]
            _add_lowrank(work, f.A, f.B, f.transpose)
        else:
            assert plan.coefficients is not None
            beta, coefs = plan.coefficients(name)
            if beta == 0.0:
                work.zero_()
            elif beta != 1.0:
                work.mul_(beta)
            stack_a, stack_b, transpose = [], [], None
            for term, c in zip(plan.terms, coefs, strict=True):
                if c == 0.0:
                    continue
                if not term.handle.is_adapter:
                    work.add_(term.handle.state[name].to(torch.float32), alpha=c)  # type: ignore[index]
                    continue
                cache = self._adapter(term)
                lr = cache.lowrank.get(name)
                if lr is not None:
                    stack_a.append(lr[0])
                    stack_b.append(lr[1] * c)
                    transpose = lr[2]
                elif name in cache.dense:
                    work.add_(cache.dense[name], alpha=c)
            if stack_a:
                # Σ_j c_j s_j B_j A_j as one product of the stacked factors (rank Σ r_j)
                _add_lowrank(work, torch.cat(stack_a, 0), torch.cat(stack_b, 1), bool(transpose))
        if work is not target:
            target.copy_(work)

    @contextlib.contextmanager
    def applied(self, plan: InPlacePlan) -> Iterator[Any]:
        """The model with ``plan`` applied; on exit (even on error) it is the base again, exactly."""
        touched = self._touched(plan)
        try:
            with torch.no_grad():
                mixed = None
                if plan.mix is not None:
                    mixed = plan.mix().mix(plan.mix_weights)  # low rank: cheap, once
                for name in touched:
                    if plan.kernel is not None:
                        plan.kernel.write(name, self.targets[name])
                    else:
                        self._write(name, plan, mixed)
            self.applications += 1
            self.touched_last = len(touched)
            yield self.model
        finally:
            self._restore(touched)

    @contextlib.contextmanager
    def loaded(self, state: Mapping[str, torch.Tensor]) -> Iterator[Any]:
        """The model with a full merged state dict (the merge path), restored to the base after."""
        names = [n for n in self.targets if n in state]
        try:
            with torch.no_grad():
                for name in names:
                    self.targets[name].copy_(state[name])
            yield self.model
        finally:
            self._restore(names)

    def _restore(self, names: list[str]) -> None:
        with torch.no_grad():
            for name in names:
                self.targets[name].copy_(self.session.base.state[name])


def _add_lowrank(work: torch.Tensor, A: torch.Tensor, B: torch.Tensor, transpose: bool) -> None:
    """``work += B @ A`` (or its transpose), without a dense temporary."""
    A = A.to(work.device, torch.float32)
    B = B.to(work.device, torch.float32)
    if transpose:
        work.addmm_(A.t(), B.t())
    else:
        work.addmm_(B, A)


def _all_scalar(params: Mapping[str, Any]) -> bool:
    return all(isinstance(v, (int, float, bool)) for v in params.values())
