"""Full weights by tensor name, one tensor (or a few rows of one) at a time: a base or a full model.

A store hides whether weights live in memory (a state dict) or in safetensors files; the file one
closes its handles every few MB, because N open models would otherwise keep N whole checkpoints
mapped into the process.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import KinshipError
from ..tensors import CheckpointReader, is_adapter_folder

# Bytes read through one checkpoint handle before it is closed (its pages count in RSS while open).
_RELEASE_BYTES = 16 << 20


class TensorStore(ABC):
    """Full weights by tensor name, read one tensor at a time."""

    label: str

    @property
    @abstractmethod
    def names(self) -> list[str]: ...

    @abstractmethod
    def shape(self, name: str) -> tuple[int, ...]: ...

    @abstractmethod
    def is_float(self, name: str) -> bool: ...

    @abstractmethod
    def get(self, name: str) -> torch.Tensor: ...

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` of a tensor (the whole of a 0-d one)."""
        tensor = self.get(name)
        return tensor if tensor.dim() == 0 else tensor[start:stop]

    def release(self) -> None:  # noqa: B027 - optional hook
        """Drop whatever a read kept mapped (called after each tensor)."""


class DictStore(TensorStore):
    def __init__(self, state_dict: Mapping[str, torch.Tensor], label: str) -> None:
        self._sd = state_dict
        self.label = label

    @property
    def names(self) -> list[str]:
        return list(self._sd)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._sd[name].shape)

    def is_float(self, name: str) -> bool:
        return self._sd[name].is_floating_point()

    def get(self, name: str) -> torch.Tensor:
        return self._sd[name].detach()


class ComputedStore(TensorStore):
    """Tensors computed when read: any object with ``names``, ``shape``, ``dtype`` and ``get``
    (e.g. a merge computed tensor by tensor, ``MergeSession.merge_lazily``'s source). The
    tensor being read is kept until the pass releases it, so its row chunks compute it once."""

    def __init__(self, source: object, label: str) -> None:
        self._src: Any = source
        self.label = label
        self._last: tuple[str | None, torch.Tensor | None] = (None, None)

    @property
    def names(self) -> list[str]:
        return list(self._src.names)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._src.shape(name))

    def is_float(self, name: str) -> bool:
        return bool(self._src.dtype(name).is_floating_point)

    def get(self, name: str) -> torch.Tensor:
        if self._last[0] != name:
            self._last = (None, None)  # the previous tensor is dropped before the next is made
            self._last = (name, self._src.get(name))
        return self._last[1]  # type: ignore[return-value]

    def release(self) -> None:
        self._last = (None, None)


class FolderStore(TensorStore):
    def __init__(self, folder: Path) -> None:
        self.reader = CheckpointReader(folder)
        self.label = str(folder)
        self._read = 0

    @property
    def names(self) -> list[str]:
        return self.reader.names

    def shape(self, name: str) -> tuple[int, ...]:
        return self.reader.shape(name)

    def is_float(self, name: str) -> bool:
        return self.reader.dtype(name).is_floating_point

    def get(self, name: str) -> torch.Tensor:
        return self.reader.get(name)

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        # Pages an open safetensors handle has read stay mapped into this process, so N open
        # models would cost N whole checkpoints of RSS: close the handle every few MB read.
        tensor = self.reader.get_rows(name, start, stop)
        self._read += tensor.nbytes
        if self._read > _RELEASE_BYTES:
            self.release()
        return tensor

    def release(self) -> None:
        self.reader.release()
        self._read = 0


def as_store(
    obj: str | Path | Mapping[str, torch.Tensor] | TensorStore, label: str = "base"
) -> TensorStore:
    if isinstance(obj, TensorStore):
        return obj
    if isinstance(obj, Mapping):
        return DictStore(obj, label)
    folder = Path(obj)
    if not folder.is_dir():
        raise KinshipError(f"{folder} is not a model folder.")
    if is_adapter_folder(folder):
        raise KinshipError(f"{folder} is a LoRA adapter; the base must be a full model.")
    return FolderStore(folder)
