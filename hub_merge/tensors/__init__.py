"""Lazy tensor access over safetensors checkpoints and peft LoRA adapters.

Merges and kinship walk a model one tensor at a time, so a 70B merge never needs a whole model in
memory: shards are memory-mapped through ``safetensors.safe_open`` and a tensor is read only when
asked for. A LoRA adapter is kept in factored form (B, A, scale) keyed by the *base* tensor name it
changes, so callers can use the cheap factored path (kinship) or materialise ``scale * B @ A`` for
one tensor at a time (merges). Pickle checkpoints are never read here.

Layout: ``formats`` (file names, dtype codes, refused formats), ``checkpoint`` (safetensors
reads), ``lora`` (peft adapters), ``writer`` (sharded output) and ``device``.
"""

from __future__ import annotations

from .checkpoint import CheckpointReader
from .device import resolve_device
from .formats import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    SAFE_INDEX,
    SAFE_SINGLE,
    dtype_name,
    is_adapter_folder,
)
from .lora import LoraAdapterReader, LoraFactors
from .writer import DEFAULT_SHARD_BYTES, ShardedWriter, TensorPlan

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "DEFAULT_SHARD_BYTES",
    "SAFE_INDEX",
    "SAFE_SINGLE",
    "CheckpointReader",
    "LoraAdapterReader",
    "LoraFactors",
    "ShardedWriter",
    "TensorPlan",
    "dtype_name",
    "is_adapter_folder",
    "resolve_device",
]
