"""Mixture-of-experts assembly (algorithms.md §6): a base and its experts as one Mixtral model.

>>> from hub_merge.moe import ExpertSpec, MoeSettings, build_moe
>>> build_moe("org/base", [ExpertSpec("org/a", "a.jsonl"), ExpertSpec("org/b", "b.jsonl")],
...           "moe", MoeSettings(top_k=2))  # doctest: +SKIP
"""

from __future__ import annotations

from .build import ExpertSpec, MoeResult, MoeSettings, build_moe, mixtral_config
from .card import build_moe_card, is_moe_folder, write_moe_readme
from .experts import SUPPORTED, SUPPORTED_TYPES, open_experts
from .router import ROUTER_MODES, PromptSet
from .routing import Routing, measure_routing, plot_routing

__all__ = [
    "ROUTER_MODES",
    "SUPPORTED",
    "SUPPORTED_TYPES",
    "ExpertSpec",
    "MoeResult",
    "MoeSettings",
    "PromptSet",
    "Routing",
    "build_moe",
    "build_moe_card",
    "is_moe_folder",
    "measure_routing",
    "mixtral_config",
    "open_experts",
    "plot_routing",
    "write_moe_readme",
]
