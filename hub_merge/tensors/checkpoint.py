"""Lazy, by-name reads of one safetensors checkpoint (single file or sharded), never whole.

Shards are memory-mapped through ``safetensors.safe_open`` and a tensor (or a row range of one) is
read only when asked for, so a 70B merge never needs a whole model in memory.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open

from ..errors import IncompatibleModelsError, UnsupportedRepoError
from .formats import SAFE_INDEX, SAFE_SINGLE, SAFETENSORS_DTYPES, itemsize, refuse_unsafe


class CheckpointReader:
    """Read tensors of one safetensors checkpoint (single file or sharded) lazily, by name.

    Examples:
        >>> reader = CheckpointReader("path/to/model")  # doctest: +SKIP
        >>> reader.shape("model.embed_tokens.weight")  # doctest: +SKIP
        (256, 64)
    """

    def __init__(self, folder: str | Path, *, weights_file: str | None = None) -> None:
        self.folder = Path(folder)
        self._where: dict[str, Path] = {}
        self._handles: dict[Path, object] = {}
        if weights_file is not None:
            files = [self.folder / weights_file]
        elif (self.folder / SAFE_INDEX).is_file():
            index = json.loads((self.folder / SAFE_INDEX).read_text())
            files = sorted({self.folder / f for f in index["weight_map"].values()})
        elif (self.folder / SAFE_SINGLE).is_file():
            files = [self.folder / SAFE_SINGLE]
        else:
            files = sorted(self.folder.glob("*.safetensors"))
            if not files:
                refuse_unsafe(self.folder)
        for file in files:
            if not file.is_file():
                raise UnsupportedRepoError(f"Shard {file.name} listed in {self.folder} is missing.")
            handle = self._open(file)
            for name in handle.keys():
                self._where[name] = file

    def _open(self, file: Path):
        handle = self._handles.get(file)
        if handle is None:
            handle = safe_open(str(file), framework="pt", device="cpu")
            self._handles[file] = handle
        return handle

    @property
    def names(self) -> list[str]:
        return list(self._where)

    def __contains__(self, name: object) -> bool:
        return name in self._where

    def __len__(self) -> int:
        return len(self._where)

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def _slice(self, name: str):
        try:
            file = self._where[name]
        except KeyError:
            raise IncompatibleModelsError(
                f"Tensor {name!r} is missing from {self.folder}."
            ) from None
        return self._open(file).get_slice(name)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._slice(name).get_shape())

    def dtype(self, name: str) -> torch.dtype:
        return SAFETENSORS_DTYPES[self._slice(name).get_dtype()]

    def numel(self, name: str) -> int:
        return math.prod(self.shape(name))

    def get(
        self, name: str, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        if name not in self._where:
            raise IncompatibleModelsError(f"Tensor {name!r} is missing from {self.folder}.")
        tensor = self._open(self._where[name]).get_tensor(name)
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        return tensor.to(device) if str(device) != "cpu" else tensor

    def get_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` (dim 0) of a tensor, read without loading the rest of it."""
        piece = self._slice(name)
        if not piece.get_shape():
            return self.get(name)
        return piece[start:stop]

    def release(self) -> None:
        """Close the open shard handles; they reopen lazily on the next read.

        A handle keeps every page it has read memory-mapped, so walking a whole checkpoint through
        one handle grows the process's RSS by the checkpoint's size. One-pass walks over many
        models (kinship, streaming merges) call this after each tensor to stay at a few tensors.
        """
        self._handles.clear()

    def metadata(self) -> dict[str, str]:
        meta: dict[str, str] = {}
        for handle in self._handles.values():
            meta.update(handle.metadata() or {})
        return meta

    def nbytes(self) -> int:
        return sum(self.numel(n) * itemsize(self.dtype(n)) for n in self._where)
