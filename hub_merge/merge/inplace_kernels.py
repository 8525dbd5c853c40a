"""In-place candidates for every per-tensor merge method: its kernel on the touched modules only.

:mod:`.inplace` writes *affine* candidates (linear, task arithmetic, factor mixes) straight into
the scoring model. Every other method (TIES, DARE-TIES, DELLA, breadcrumbs, SLERP, nuslerp...)
used to go through the merge path: a whole new state dict per candidate, then a copy into the
model, although a search over LoRA experts changes only the adapted modules. Here such a
candidate is applied module by module:

- the *touched* modules are those where some input differs from the base: for LoRA experts the
  modules an adapter adapts (the union over the recipe's inputs), for a full model every tensor;
- for each touched module, the inputs are read exactly as the merge path reads them
  (``ModelHandle.tensor``: a LoRA expert's ``W_base + s·B·A`` built for that module alone, in
  float32, then in the session's dtype), and merged by the same
  :class:`~hub_merge.merge.methods.TensorMerge` as ``MergeSession.merge`` (same kernel, same
  per-tensor seed, so DARE draws the same mask), then written into the model;
- after scoring, :class:`~hub_merge.merge.inplace.InPlaceModel` copies the touched tensors back
  from the session's base copy, bit for bit, as for affine candidates.

So a touched module is bit for bit the merge path's tensor. An untouched module stays the base:
for the task-vector methods (TIES, DARE, DELLA, breadcrumbs, task arithmetic, SCE) the merge
path gives the base there too (all deltas are zero); for the interpolations (SLERP, nuslerp,
multislerp, Karcher mean) it gives ``f(W_base, ..., W_base)``, which is the base up to the
rounding of ``(1 - t)·W + t·W`` (an ulp), a difference the search's scores do not see (tests
compare to 1e-5). Methods not listed in ``KERNEL_METHODS`` (and nested recipes, another output
dtype, another compute dtype) keep the merge path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from ..errors import ConfigError, UnknownMethodError
from .memory import MergeSession, ModelHandle
from .methods import TensorMerge, get_method, needs_base, uses_base, validate_parameters
from .recipe import MergeRecipe

# Methods whose merge of one tensor depends on that tensor's inputs only, applied here.
KERNEL_METHODS = (
    "ties",
    "dare_ties",
    "dare_linear",
    "della",
    "della_linear",
    "breadcrumbs",
    "breadcrumbs_ties",
    "task_arithmetic",
    "sce",
    "slerp",
    "nuslerp",
    "multislerp",
    "karcher",
)


@dataclass
class KernelPlan:
    """How to write one candidate of a kernel method into the model (see :func:`kernel_plan`).

    ``inputs`` are the method's non-base inputs in recipe order, ``base`` its base input (None
    when the method takes none); ``touched`` the model's tensors the candidate changes.
    """

    recipe: MergeRecipe
    op: TensorMerge
    inputs: list[ModelHandle]
    base: ModelHandle | None
    touched: list[str]
    device: torch.device
    out_dtype: torch.dtype

    def merged(self, name: str) -> torch.Tensor:
        """Tensor ``name`` of the candidate, as ``MergeSession.merge`` computes it."""
        tensors = [h.tensor(name, self.device) for h in self.inputs]
        base = self.base.tensor(name, self.device) if self.base is not None else None
        return self.op(name, tensors, base, out_dtype=self.out_dtype)

    def write(self, name: str, target: torch.Tensor) -> None:
        """Write the candidate's tensor ``name`` into ``target`` (a live model tensor)."""
        target.copy_(self.merged(name))


def kernel_plan(
    recipe: MergeRecipe,
    *,
    session: MergeSession,
    handle: Callable[[str], ModelHandle],
    is_base: Callable[[str], bool],
    targets: Mapping[str, torch.Tensor],
) -> KernelPlan | None:
    """The in-place form of a kernel-method ``recipe``, or None (then: the merge path).

    Args:
        recipe: the candidate.
        session: the search's session (its base, device, dtype and layer count).
        handle: recipe model string -> loaded ``ModelHandle`` (the caller's cache).
        is_base: whether a recipe model string names the session's base.
        targets: the model's live tensors by name (one name per tied tensor).
    """
    if recipe.method not in KERNEL_METHODS:
        return None
    if recipe.dtype is not None and getattr(torch, recipe.dtype) != session.dtype:
        return None
    if recipe.compute_dtype not in (None, "float32"):
        return None
    if any(not isinstance(e.model, str) for e in recipe.models):
        return None  # nested recipe: its inputs are merges
    if recipe.base is not None and not isinstance(recipe.base, str):
        return None
    method = get_method(recipe.method)

    def load(source: str) -> ModelHandle:
        return session.base if is_base(source) else handle(source)

    inputs = [load(e.model) for e in recipe.models]  # type: ignore[arg-type]
    base = load(recipe.base) if recipe.base is not None and uses_base(method) else None
    model_params = [dict(e.parameters) for e in recipe.models]
    try:
        validate_parameters(
            method,
            recipe.parameters,
            model_params,
            n_inputs=len(inputs),
            has_base=base is not None,
        )
    except (ConfigError, UnknownMethodError):
        return None  # the merge path raises the same error, with its context
    if needs_base(method) and base is None:
        return None
    op = TensorMerge(
        method,
        recipe.parameters,
        model_params,
        num_layers=session.num_layers,
        seed=recipe.seed,
        exact_mergekit=recipe.exact_mergekit,
    )
    changed: set[str] | None = set()
    for h in [*inputs, *([base] if base is not None else [])]:
        if h is session.base:
            continue
        if not h.is_adapter:
            changed = None  # a full model differs from the base everywhere
            break
        changed |= set(h.source.adapter.names)  # type: ignore[attr-defined,operator]
    touched = [n for n in targets if changed is None or n in changed]
    return KernelPlan(
        recipe, op, inputs, base, touched, device=session.device, out_dtype=session.dtype
    )
