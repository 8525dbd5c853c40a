"""File names and dtype codes of the formats hub-merge reads and writes, and what it refuses.

One place for the safetensors / peft file names and the safetensors dtype codes, shared by the
readers (checkpoints, adapters) and the shard writer; pickle and GGUF folders are refused here
with a message saying what to do instead.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UnsafeWeightsError, UnsupportedRepoError

SAFE_SINGLE = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"

SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``: how recipes, mergekit YAML and configs spell it."""
    return str(dtype).removeprefix("torch.")


def refuse_unsafe(folder: Path) -> None:
    pickles = sorted(p.name for p in folder.glob("*.bin")) + sorted(
        p.name for p in folder.glob("*.pt")
    )
    ggufs = sorted(p.name for p in folder.glob("*.gguf"))
    if pickles:
        raise UnsafeWeightsError(
            f"{folder} has only pickle weights ({', '.join(pickles[:3])}); hub-merge reads "
            "safetensors only. Pull it with allow_pickle=True (CLI: `hub-merge pull FOLDER_OR_ID "
            "--allow-pickle`), which converts it once to safetensors and gives that folder."
        )
    if ggufs:
        raise UnsupportedRepoError(
            f"{folder} holds GGUF weights ({', '.join(ggufs[:3])}), which cannot be merged "
            "directly. Load it with transformers (gguf_file=...) and save_pretrained it first."
        )
    raise UnsupportedRepoError(
        f"No safetensors weights in {folder}: expected {SAFE_SINGLE}, {SAFE_INDEX}, or "
        f"{ADAPTER_WEIGHTS} beside {ADAPTER_CONFIG}."
    )


def itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def is_adapter_folder(folder: str | Path) -> bool:
    return (Path(folder) / ADAPTER_CONFIG).is_file()


SAFETENSORS_CODES = {v: k for k, v in SAFETENSORS_DTYPES.items()}
