"""hub-merge: kinship-guided model merging for the Hugging Face Hub.

Pull experts and LoRA adapters from the Hub, measure how related they are (model kinship), search
for the best merge, and push it back with honest lineage on its model card.
"""

from __future__ import annotations

from . import dam as dam  # registers hub-merge's learned merge method (merge/ never imports dam/)
from .errors import HubMergeError
from .refs import ModelRef
from .version import __version__

__all__ = ["CompareConfig", "HubMergeError", "ModelRef", "__version__", "compare_strategies"]


def __getattr__(name: str) -> object:
    """``hub_merge.compare_strategies`` and ``CompareConfig``, imported when first used."""
    if name in ("compare_strategies", "CompareConfig"):
        from . import leaderboard

        return getattr(leaderboard, name)
    raise AttributeError(name)
