"""Merge inputs as per-tensor sources: full checkpoints, or LoRA adapters applied on the fly.

An adapter input never becomes a merged copy of its base on disk or in memory: its tensor for a
name is ``base[name] + scale * B @ A``, computed when that tensor is merged.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import torch

from ..errors import IncompatibleModelsError, UnsupportedRepoError
from ..tensors import CheckpointReader, LoraAdapterReader, is_adapter_folder


class TensorSource(Protocol):
    """What a merge needs from an input: names, shapes, and one tensor at a time."""

    label: str

    @property
    def names(self) -> list[str]: ...

    def shape(self, name: str) -> tuple[int, ...]: ...

    def dtype(self, name: str) -> torch.dtype: ...

    def get(
        self, name: str, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
    ) -> torch.Tensor: ...


HEAD = "lm_head.weight"
_EMBEDDINGS = ("model.embed_tokens.weight", "transformer.wte.weight", "embed_tokens.weight")


class CheckpointSource:
    """A model folder's tensors; with ``untie_head``, a tied ``lm_head`` is a tensor of its own.

    A checkpoint with tied embeddings stores no ``lm_head.weight``. When an adapter replaces the
    head (PEFT ``modules_to_save=["lm_head"]``), PEFT's merge unties it: the output gets its own
    head and ``tie_word_embeddings: false``. ``untie_head`` shows such a checkpoint's head as
    the embedding it is tied to, so every input has the tensor the output will have.
    """

    def __init__(self, folder: str | Path, *, untie_head: bool = False) -> None:
        self.reader = CheckpointReader(folder)
        self.label = str(folder)
        self.aliases: dict[str, str] = {}
        if untie_head and HEAD not in self.reader.names:
            embed = tied_embedding(self.reader.names)
            if embed is not None:
                self.aliases[HEAD] = embed

    @property
    def names(self) -> list[str]:
        return self.reader.names + list(self.aliases)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.reader.shape(self.aliases.get(name, name))

    def dtype(self, name: str) -> torch.dtype:
        return self.reader.dtype(self.aliases.get(name, name))

    def get(self, name, *, device="cpu", dtype=None) -> torch.Tensor:
        return self.reader.get(self.aliases.get(name, name), device=device, dtype=dtype)


def tied_embedding(names: list[str]) -> str | None:
    """The input embedding a checkpoint without ``lm_head.weight`` ties its head to, if any."""
    if HEAD in names:
        return None
    return next((e for e in _EMBEDDINGS if e in names), None)


def adapters_untie_head(base_names: list[str], models: list[str | Path]) -> bool:
    """Whether an adapter among ``models`` replaces the head of a base whose head is tied.

    PEFT's merge of such an adapter unties the head (the output stores its own ``lm_head`` and
    says ``tie_word_embeddings: false``), so the merge must too. An adapter saved with
    ``ensure_weight_tying`` keeps them tied in PEFT (embedding and head both replaced): refused.
    """
    if tied_embedding(base_names) is None:
        return False
    untie = False
    for model in models:
        if not is_adapter_folder(Path(model)):
            continue
        adapter = LoraAdapterReader(model)
        if HEAD not in adapter.names:
            continue
        if adapter.config.get("ensure_weight_tying"):
            raise IncompatibleModelsError(
                f"Adapter {model} replaces lm_head with ensure_weight_tying, so PEFT keeps the "
                "base's tied embedding and head equal to the saved weight; hub-merge merges "
                "modules_to_save heads untied only: merge it with peft (merge_and_unload) and "
                "use the full model instead."
            )
        untie = True
    return untie


class StateDictSource:
    """An in-memory state dict (a previous merge, or a model already on the device)."""

    def __init__(self, state: Mapping[str, torch.Tensor], label: str = "<memory>") -> None:
        self.state = state
        self.label = label

    @property
    def names(self) -> list[str]:
        return list(self.state)

    def _t(self, name: str) -> torch.Tensor:
        try:
            return self.state[name]
        except KeyError:
            raise IncompatibleModelsError(
                f"Tensor {name!r} is missing from {self.label}."
            ) from None

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._t(name).shape)

    def dtype(self, name: str) -> torch.dtype:
        return self._t(name).dtype

    def get(self, name, *, device="cpu", dtype=None) -> torch.Tensor:
        t = self._t(name)
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        return t.to(device)


class AdapterSource:
    """A LoRA adapter seen as the full model ``base + delta``, one tensor at a time."""

    def __init__(self, adapter: str | Path | LoraAdapterReader, base: TensorSource) -> None:
        self.adapter = (
            adapter if isinstance(adapter, LoraAdapterReader) else LoraAdapterReader(adapter)
        )
        self.base = base
        self.label = str(self.adapter.folder)
        self._check_base()

    def _check_base(self) -> None:
        # Shapes of every adapted tensor against the base, before anything is merged or written.
        self.adapter.check_biases(self.base.names, self.base.label)
        for name in self.adapter.names:
            if name == HEAD and name not in self.base.names and tied_embedding(self.base.names):
                raise IncompatibleModelsError(
                    f"Adapter {self.label} replaces lm_head (PEFT modules_to_save), which the "
                    f"base {self.base.label} ties to its input embedding; the merge unties it as "
                    "PEFT does only when the base is opened with untie_head (merge_to_folder "
                    "does): merge it with `hub-merge merge`, or with peft's merge_and_unload."
                )
            if name not in self.base.names:
                raise IncompatibleModelsError(
                    f"Adapter {self.label} changes {name!r}, which the base {self.base.label} does "
                    "not have: it belongs to another base model."
                )
            shape = self.base.shape(name)
            f = self.adapter.factors(name)
            if f is not None:
                out, inp = (f.B.shape[0], f.A.shape[1])
                got = (inp, out) if f.transpose else (out, inp)
                if tuple(got) != tuple(shape):
                    raise IncompatibleModelsError(
                        f"Adapter {self.label} changes {name!r} with shape {tuple(got)} but the base "
                        f"{self.base.label} has {tuple(shape)}: it was trained on another base."
                    )

    @property
    def names(self) -> list[str]:
        return self.base.names

    def shape(self, name: str) -> tuple[int, ...]:
        return self.base.shape(name)

    def dtype(self, name: str) -> torch.dtype:
        return self.base.dtype(name)

    def get(self, name, *, device="cpu", dtype=None) -> torch.Tensor:
        base = self.base.get(name, device=device)
        delta = self.adapter.delta(name, base, dtype=torch.float32)
        if delta is None:
            return base if dtype is None or not base.is_floating_point() else base.to(dtype)
        full = base.to(torch.float32) + delta
        return full.to(dtype or base.dtype)


def open_source(
    model: str | Path, base: TensorSource | None, *, untie_head: bool = False
) -> TensorSource:
    """A folder as a source; adapters need the base they apply to (``untie_head``: see
    :class:`CheckpointSource`)."""
    folder = Path(model)
    if not folder.exists():
        raise UnsupportedRepoError(
            f"{model} is not a local folder. Pull Hub models first (hub_merge.hub) and pass the folder."
        )
    if is_adapter_folder(folder):
        if base is None:
            raise IncompatibleModelsError(
                f"{model} is a LoRA adapter: give the base model it was trained on (`base:`)."
            )
        return AdapterSource(folder, base)
    return CheckpointSource(folder, untie_head=untie_head)
