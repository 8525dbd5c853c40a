"""The merge engine: recipes, streaming merges to a folder, and in-memory merges for searches.

Arithmetic is mergekit's ``merge_tensors`` (task-arithmetic methods with the linear-time sparsification
of ``kernels.py``); this package adds recipes, a registry of methods (``registry``: mergekit's
family, and hub-merge's own methods, which register themselves), parameter resolution per
tensor, LoRA inputs applied on the fly, an atomic sharded writer and a device-resident session.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .factor_method import FACTOR_METHOD, factor_recipe  # registers the factor mix (light)
from .recipe import Condition, MergeRecipe, ModelEntry  # light: pydantic and yaml only
from .registry import MergeInputs, MergeMethod, method_for, register_method, registered_methods

if TYPE_CHECKING:
    from .adapter_mix import FactorMix
    from .adapter_out import AdapterMergeResult, merge_adapters
    from .inputs import AdapterSource, CheckpointSource, StateDictSource, open_source
    from .memory import MergeSession, ModelHandle, resolve_device
    from .methods import available_methods, get_method, layer_t, parameter_names, tensor_seed
    from .run import merge_to_folder, write_state_dict

# The engine imports torch and mergekit; load it on first use so that reading a recipe (the
# CLI, the card, search strategies) stays light.
_LAZY = {
    "AdapterSource": "inputs",
    "CheckpointSource": "inputs",
    "StateDictSource": "inputs",
    "open_source": "inputs",
    "MergeSession": "memory",
    "ModelHandle": "memory",
    "resolve_device": "memory",
    "available_methods": "methods",
    "get_method": "methods",
    "layer_t": "methods",
    "parameter_names": "methods",
    "tensor_seed": "methods",
    "merge_to_folder": "run",
    "write_state_dict": "run",
    "AdapterMergeResult": "adapter_out",
    "merge_adapters": "adapter_out",
    "FactorMix": "adapter_mix",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(name)
    return getattr(importlib.import_module(f".{module}", __name__), name)


__all__ = [
    "AdapterSource",
    "CheckpointSource",
    "Condition",
    "MergeRecipe",
    "MergeSession",
    "ModelEntry",
    "ModelHandle",
    "StateDictSource",
    "available_methods",
    "default_greedy_recipe",
    "get_method",
    "layer_t",
    "merge_to_folder",
    "open_source",
    "parameter_names",
    "resolve_device",
    "tensor_seed",
    "write_state_dict",
    "AdapterMergeResult",
    "merge_adapters",
    "FACTOR_METHOD",
    "FactorMix",
    "factor_recipe",
    "MergeInputs",
    "MergeMethod",
    "method_for",
    "register_method",
    "registered_methods",
]

# The paper's pairwise SLERP schedule (default merge step of the greedy search).
DEFAULT_SLERP_T = [
    {"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
    {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]},
    {"value": 0.5},
]


def default_greedy_recipe(parent_a: str, parent_b: str) -> MergeRecipe:
    """SLERP of two parents, ``parent_a`` as mergekit's base, with the layer-wise t schedule."""
    return MergeRecipe(
        method="slerp",
        base=parent_a,
        models=[ModelEntry(model=parent_b)],
        parameters={"t": [Condition(**c) for c in DEFAULT_SLERP_T]},
        dtype=None,
    )
