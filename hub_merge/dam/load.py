"""A DAM module from a saved coefficient file, and the model folder it materialises."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch

from ..errors import ConfigError
from .module import DamModel
from .train import read_coefficients


def load_dam(
    experts: Mapping[str, str | Path],
    coefficients: str | Path,
    *,
    base: str | Path | None = None,
    device: str | torch.device = "auto",
    base_state: Mapping[str, torch.Tensor] | None = None,
) -> DamModel:
    """A DAM module with the coefficients of a saved file (experts in the file's order).

    ``base_state``: the base already in memory (see :class:`DamModel`)."""
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
        base_state=base_state,
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
