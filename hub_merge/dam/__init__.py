"""DAM, Differentiable Adaptive Merging (Arcee AI, 2024: https://arxiv.org/abs/2410.08371).

Instead of searching merge weights, DAM learns them: every linear layer of every expert gets a
trainable coefficient per input column, initialised at 1/N (exactly the uniform average), and the
coefficients are trained by gradient descent so the merge imitates each expert on that expert's
own prompts. The result is materialised into the base architecture, so it loads with
``from_pretrained`` like any merge, and the coefficients are saved beside it.

>>> result = train_dam({"a": "zoo/adapters/a", "b": "zoo/adapters/b"}, prompts, "run/dam",
...                    base="zoo/base")                                       # doctest: +SKIP
>>> materialise({"a": ..., "b": ...}, result.coefficients, "out", base="zoo/base")  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch

from ..errors import ConfigError
from .data import assign_tasks
from .module import COEFFICIENTS_FORMAT, DamModel, MergedParam
from .settings import DamSettings
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

PAPER_URL = "https://arxiv.org/abs/2410.08371"

__all__ = [
    "CHECKPOINT_FILE",
    "COEFFICIENTS_FILE",
    "COEFFICIENTS_FORMAT",
    "PAPER_URL",
    "DamModel",
    "DamResult",
    "DamSettings",
    "DamTrainer",
    "MergedParam",
    "assign_tasks",
    "describe",
    "file_digest",
    "kl_to_teacher",
    "load_dam",
    "materialise",
    "read_coefficients",
    "save_coefficients",
    "train_dam",
]


def load_dam(
    experts: Mapping[str, str | Path],
    coefficients: str | Path,
    *,
    base: str | Path | None = None,
    device: str | torch.device = "auto",
) -> DamModel:
    """A DAM module with the coefficients of a saved file (experts in the file's order)."""
    tensors, meta = read_coefficients(coefficients)
    order = json.loads(meta.get("experts", "[]"))
    if sorted(order) != sorted(experts):
        raise ConfigError(
            f"{coefficients} holds coefficients for experts {order}, not {sorted(experts)}."
        )
    settings = json.loads(meta.get("settings", "{}"))
    model = DamModel(
        [experts[n] for n in order],
        base=base,
        names=order,
        device=device,
        train_embeddings_norms=bool(settings.get("train_embeddings_norms", False)),
    )
    model.load_coefficients(tensors, where=str(coefficients))
    return model


def materialise(
    experts: Mapping[str, str | Path],
    coefficients: str | Path,
    out: str | Path,
    *,
    base: str | Path | None = None,
    device: str | torch.device = "auto",
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write the DAM merge of ``experts`` with saved ``coefficients`` as a model folder."""
    model = load_dam(experts, coefficients, base=base, device=device)
    return model.save_pretrained(out, metadata=metadata)
