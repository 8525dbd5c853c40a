"""The merge engine: recipes, streaming merges to a folder, and in-memory merges for searches.

Arithmetic is mergekit's ``merge_tensors`` (task-arithmetic methods with the linear-time sparsification
of ``kernels.py``); this package adds recipes, parameter resolution per
tensor, LoRA inputs applied on the fly, an atomic sharded writer and a device-resident session.
"""

from .inputs import AdapterSource, CheckpointSource, StateDictSource, open_source
from .memory import MergeSession, ModelHandle, resolve_device
from .methods import available_methods, get_method, layer_t, parameter_names, tensor_seed
from .recipe import Condition, MergeRecipe, ModelEntry
from .run import merge_to_folder, write_state_dict

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


from .adapter_out import AdapterMergeResult, merge_adapters  # noqa: E402

__all__ += ["AdapterMergeResult", "merge_adapters"]

from .adapter_mix import FACTOR_METHOD, FactorMix, factor_recipe  # noqa: E402

__all__ += ["FACTOR_METHOD", "FactorMix", "factor_recipe"]
