"""Where tensor work runs: one rule for ``device="auto"`` shared by merge, kinship and evaluation."""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"``: CUDA when present, else CPU. Shared by merge, kinship and evaluation."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
