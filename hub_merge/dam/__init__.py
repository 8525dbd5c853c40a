"""DAM, Differentiable Adaptive Merging (Arcee AI, 2024: https://arxiv.org/abs/2410.08371).

Instead of searching merge weights, DAM learns them: every linear layer of every expert gets a
trainable coefficient per input column, initialised at 1/N (exactly the uniform average), and the
coefficients are trained by gradient descent so the merge imitates each expert on that expert's
own prompts. The result is materialised into the base architecture, so it loads with
``from_pretrained`` like any merge, and the coefficients are saved beside it.

>>> result = train_dam({"a": "zoo/adapters/a", "b": "zoo/adapters/b"}, prompts, "run/dam",
...                    base="zoo/base")                                       # doctest: +SKIP
>>> materialise({"a": ..., "b": ...}, result.coefficients, "out", base="zoo/base")  # doctest: +SKIP

Only the settings and the merge registry's ``dam`` entry (``method``) are imported eagerly (the
CLI builds its options from the settings; ``hub_merge`` imports this package so the entry is
registered before any recipe is read); the rest loads torch and transformers on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import method as method  # registers the `dam` merge method (light: no torch)
from .settings import PAPER_URL, DamSettings

if TYPE_CHECKING:
    from .data import assign_tasks
    from .load import load_dam, materialise
    from .module import COEFFICIENTS_FORMAT, DamModel, MergedParam
    from .recipe import DAM_METHOD, dam_recipe, is_dam_recipe
    from .train import (
        CHECKPOINT_FILE,
        COEFFICIENTS_FILE,
        DamResult,
        DamTrainer,
        describe,
        file_digest,
        kl_to_teacher,
        read_coefficients,
        save_coefficients,
        train_dam,
    )

_LAZY = {
    "assign_tasks": "data",
    "load_dam": "load",
    "materialise": "load",
    "COEFFICIENTS_FORMAT": "module",
    "DamModel": "module",
    "MergedParam": "module",
    "DAM_METHOD": "recipe",
    "dam_recipe": "recipe",
    "is_dam_recipe": "recipe",
    "CHECKPOINT_FILE": "train",
    "COEFFICIENTS_FILE": "train",
    "DamResult": "train",
    "DamTrainer": "train",
    "describe": "train",
    "file_digest": "train",
    "kl_to_teacher": "train",
    "read_coefficients": "train",
    "save_coefficients": "train",
    "train_dam": "train",
}

__all__ = [
    "PAPER_URL",
    "DamSettings",
    "assign_tasks",
    "load_dam",
    "materialise",
    "COEFFICIENTS_FORMAT",
    "DamModel",
    "MergedParam",
    "DAM_METHOD",
    "dam_recipe",
    "is_dam_recipe",
    "CHECKPOINT_FILE",
    "COEFFICIENTS_FILE",
    "DamResult",
    "DamTrainer",
    "describe",
    "file_digest",
    "kl_to_teacher",
    "read_coefficients",
    "save_coefficients",
    "train_dam",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(name)
    return getattr(importlib.import_module(f".{module}", __name__), name)
