"""Mixture-of-experts assembly (algorithms.md §6): a base and its experts as one MoE model
(Mixtral, Qwen2-MoE or Qwen3-MoE, :mod:`.arch`).

>>> from hub_merge.moe import ExpertSpec, MoeSettings, build_moe
>>> build_moe("org/base", [ExpertSpec("org/a", "a.jsonl"), ExpertSpec("org/b", "b.jsonl")],
...           "moe", MoeSettings(top_k=2))  # doctest: +SKIP
"""

from __future__ import annotations

from .arch import OUTPUT_ARCHS, mixtral_config
from .build import ExpertSpec, MoeResult, MoeSettings, build_moe
from .card import build_moe_card, is_moe_folder, write_moe_readme
from .experts import SUPPORTED, SUPPORTED_TYPES, open_experts
from .router import ROUTER_MODES, PromptSet
from .routing import Routing, measure_routing, plot_routing

__all__ = [
    "OUTPUT_ARCHS",
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
