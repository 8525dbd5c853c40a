"""Kinship sources: the models whose task vectors enter the matrix (folders, adapters, state dicts).

A source checks it can share the base before the pass, then hands the pass one term per base
tensor. LoRA adapters stay factored (U @ V), so their deltas are never made dense.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from functools import partial
from pathlib import Path

import torch

from ..errors import KinshipError
from ..tensors import LoraAdapterReader, is_adapter_folder
from .base import KinshipBase
from .stores import ComputedStore, DictStore, FolderStore, TensorStore
from .terms import DenseTerm, LowRankTerm, Term


class KinshipSource(ABC):
    """One model whose task vector enters the kinship matrix."""

    name: str

    def check(self, base: KinshipBase) -> None:  # noqa: B027 - optional hook
        """Raise KinshipError when this model cannot share ``base`` (called before the pass)."""

    @abstractmethod
    def term(self, name: str, base: KinshipBase, device: torch.device) -> Term:
        """This model's delta for base tensor ``name``: dense weights, factored, or None (zero)."""

    def release(self) -> None:  # noqa: B027 - optional hook
        """Drop file mappings after a tensor."""


class _FullSource(KinshipSource):
    def __init__(self, store: TensorStore, name: str) -> None:
        self.store = store
        self.name = name

    def check(self, base: KinshipBase) -> None:
        have = set(self.store.names)
        missing = [n for n in base.names if n not in have]
        if missing:
            raise KinshipError(
                f"{self.name} has no tensor {missing[0]!r} of the base ({len(missing)} missing): it "
                "is another architecture, so it has no kinship with the base's fine-tunes."
            )
        for n in base.names:
            base.fit_shape(n, self.store.shape(n), self.name)

    def term(self, name: str, base: KinshipBase, device: torch.device) -> Term:
        # Rows are read within the base's rows only: a larger vocabulary is truncated for free.
        return DenseTerm(partial(self.store.rows, name))

    def release(self) -> None:
        self.store.release()


class StateDictSource(_FullSource):
    """A full model held in memory as a state dict (e.g. a merged child during a search)."""

    def __init__(self, state_dict: Mapping[str, torch.Tensor], name: str = "model") -> None:
        super().__init__(DictStore(state_dict, name), name)


class ComputedSource(_FullSource):
    """A full model whose tensors are computed when the pass reads them (see ``ComputedStore``):
    a merged node a search does not hold in memory costs one tensor at a time."""

    def __init__(self, source: object, name: str = "model") -> None:
        super().__init__(ComputedStore(source, name), name)


class FolderSource(_FullSource):
    """A full model folder of safetensors (single file or sharded)."""

    def __init__(self, folder: str | Path, name: str | None = None) -> None:
        super().__init__(FolderStore(Path(folder)), name or Path(folder).name)


_HUB_ID = re.compile(r"^[\w][\w.\-]*/[\w][\w.\-]*$")


def _hub_name(ref: str | None) -> str | None:
    """The lower-cased repo name of a Hub id (``org/name``), None for paths and other strings."""
    if not ref:
        return None
    ref = ref.split("@")[0].strip()
    if not _HUB_ID.match(ref) or Path(ref).expanduser().exists():
        return None
    return ref.split("/")[-1].lower()


class AdapterSource(KinshipSource):
    """A peft LoRA adapter folder of the base, kept factored: its delta is never made dense."""

    def __init__(
        self, folder: str | Path, name: str | None = None, *, check_base_id: bool = True
    ) -> None:
        self.reader = LoraAdapterReader(folder)
        self.name = name or Path(folder).name
        self.check_base_id = check_base_id
        self._names = set(self.reader.names)

    def check(self, base: KinshipBase) -> None:
        theirs, ours = _hub_name(self.reader.base_model), _hub_name(base.base_id)
        # Compare ids only when both are Hub ids: a local path or a renamed copy says nothing.
        if self.check_base_id and theirs and ours and theirs != ours:
            raise KinshipError(
                f"Adapter {self.name} was trained on {self.reader.base_model!r}, not on the base "
                f"{base.base_id!r}: its delta is relative to another model. Compare it against its "
                "own base (or pass check_base_id=False if the two ids name the same weights)."
            )
        self.reader.check_biases(base.all_names, base.store.label)
        for n in sorted(self._names):
            if n not in base.all_names:
                raise KinshipError(
                    f"Adapter {self.name} changes {n!r}, which the base does not have: it was "
                    "trained on another architecture."
                )
            factors = self.reader.factors(n)
            if factors is not None:  # its delta's shape in the base's layout
                base.fit_shape(n, factors.shape, self.name)
            override = self.reader.override(n)
            if override is not None:
                base.fit_shape(n, tuple(override.shape), self.name)

    def term(self, name: str, base: KinshipBase, device: torch.device) -> Term:
        if name not in self._names:
            return None
        rows = base.shape(name)[0] if base.shape(name) else None
        bias = self.reader.bias_delta(name)
        if bias is not None:  # lora_bias=True: the bias shifts by scale * lora_B.bias
            full = base.store.get(name).to(torch.float64) + bias.to(torch.float64)
            return DenseTerm(lambda start, stop: full[start:stop])
        factors = self.reader.factors(name)
        override = self.reader.override(name)
        if override is not None:
            override = override if rows is None else override[:rows]
            if factors is not None and torch.equal(
                override, base.store.get(name).to(override.dtype)
            ):
                override = None  # peft saved the unchanged base embedding beside its factors
        if override is not None:  # modules_to_save, or a changed embedding: full weights
            if factors is not None:
                override = override.to(torch.float64) + factors.dense(dtype=torch.float64)[:rows]
            full = override
            return DenseTerm(lambda start, stop: full if full.dim() == 0 else full[start:stop])
        low = self.reader.lowrank(name, device=device, dtype=torch.float64)  # scale in B
        assert low is not None
        # delta = left @ right in the base's layout (b @ a, or a.T @ b.T: embeddings, Conv1D)
        return LowRankTerm(low.left[:rows], low.right)


def as_source(model: object, name: str | None = None) -> KinshipSource:
    """A source from a folder (full model or adapter), a state dict, or a source as is."""
    if isinstance(model, KinshipSource):
        if name:
            model.name = name
        return model
    if isinstance(model, Mapping):
        return StateDictSource(model, name or "model")
    if isinstance(model, (str, Path)):
        folder = Path(model)
        if not folder.is_dir():
            raise KinshipError(f"{folder} is not a model folder (nor a loaded state dict).")
        if is_adapter_folder(folder):
            return AdapterSource(folder, name)
        return FolderSource(folder, name)
    raise KinshipError(
        f"Cannot compute kinship of a {type(model).__name__}: pass a model folder, an adapter "
        "folder or a state dict (dict of tensor name -> tensor)."
    )
