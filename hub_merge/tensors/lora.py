"""peft LoRA adapters, exposed by the base tensor names they change, kept factored (B, A, scale).

Callers choose the cheap factored path (kinship) or materialise ``scale * B @ A`` for one tensor
at a time (merges); ``modules_to_save`` replacements and ``lora_bias`` bias deltas are exposed
beside the factors.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import IncompatibleModelsError, LoraBiasError, UnsupportedRepoError
from .checkpoint import CheckpointReader
from .formats import ADAPTER_CONFIG, ADAPTER_WEIGHTS, refuse_unsafe


@dataclass(frozen=True)
class LoraFactors:
    """One adapted matrix in factored form: delta = scale * B @ A (transposed when ``transpose``).

    ``transpose`` is set for embeddings (peft stores their factors the other way round) and for
    ``fan_in_fan_out`` layers (GPT-2 style Conv1D).
    """

    A: torch.Tensor  # (r, in)
    B: torch.Tensor  # (out, r)
    scale: float
    transpose: bool = False

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])

    @property
    def left(self) -> torch.Tensor:
        """``(rows, r)``: delta = scale · left @ right in the *base tensor's* layout."""
        return self.A.T if self.transpose else self.B

    @property
    def right(self) -> torch.Tensor:
        """``(r, cols)``: see :attr:`left` (peft's B·A, or its transpose for embeddings/Conv1D)."""
        return self.B.T if self.transpose else self.A

    @property
    def shape(self) -> tuple[int, int]:
        """The base tensor's shape this delta has."""
        return int(self.left.shape[0]), int(self.right.shape[1])

    def dense(
        self, *, dtype: torch.dtype = torch.float32, device: str | torch.device | None = None
    ) -> torch.Tensor:
        a = self.A.to(device=device, dtype=dtype)
        b = self.B.to(device=device, dtype=dtype)
        delta = (b @ a) * self.scale  # (out, in)
        return delta.T if self.transpose else delta


def _pattern_value(patterns: dict, module: str, default):
    # peft matches rank_pattern / alpha_pattern keys as a suffix regex of the module name.
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?{key}$", module):
            return value
    return default


def adapter_refusal(config: dict, where: object) -> str | None:
    """Why an adapter config cannot be merged (not LoRA, or DoRA), or None.

    One text for ``merge``, ``kinship`` and ``plan`` (which reads only the config), so the plan
    refuses what the merge would.
    """
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        return f"{where} is a {peft_type} adapter; hub-merge merges LoRA adapters only."
    if config.get("use_dora"):
        return (
            f"{where} is a DoRA adapter, whose delta is not scale*B@A; merge it into its "
            "base with peft (merge_and_unload) and use the full model instead."
        )
    return None


class LoraAdapterReader:
    """A peft LoRA adapter folder, exposed by the base-model tensor names it changes."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        cfg_path = self.folder / ADAPTER_CONFIG
        if not cfg_path.is_file():
            raise UnsupportedRepoError(f"{self.folder} is not a peft adapter: no {ADAPTER_CONFIG}.")
        self.config: dict = json.loads(cfg_path.read_text())
        refusal = adapter_refusal(self.config, self.folder)
        if refusal:
            raise UnsupportedRepoError(refusal)
        weights = self.folder / ADAPTER_WEIGHTS
        if not weights.is_file():
            refuse_unsafe(self.folder)
        self._reader = CheckpointReader(self.folder, weights_file=ADAPTER_WEIGHTS)
        self._factors: dict[str, tuple[str, str, float, bool]] = {}
        self._overrides: dict[str, str] = {}
        self._biases: dict[str, tuple[str, float]] = {}  # lora_bias=True: bias delta keys
        self._index()

    @property
    def base_model(self) -> str | None:
        return self.config.get("base_model_name_or_path")

    @property
    def rank(self) -> int:
        return int(self.config.get("r", 8))

    @property
    def alpha(self) -> float:
        return float(self.config.get("lora_alpha", self.rank))

    @property
    def target_modules(self) -> list[str] | str | None:
        return self.config.get("target_modules")

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the adapter's tensors are stored in (an adapter written from it keeps it)."""
        return self._reader.dtype(self._reader.names[0])

    def _scale(self, module: str) -> float:
        r = _pattern_value(self.config.get("rank_pattern", {}), module, self.rank)
        alpha = _pattern_value(self.config.get("alpha_pattern", {}), module, self.alpha)
        return alpha / math.sqrt(r) if self.config.get("use_rslora") else alpha / r

    def _index(self) -> None:
        fan_in_fan_out = bool(self.config.get("fan_in_fan_out"))
        for key in self._reader.names:
            name = key.removeprefix("base_model.model.")
            for _kind, suffix_a, suffix_b, transpose in (
                ("linear", ".lora_A.weight", ".lora_B.weight", fan_in_fan_out),
                ("embedding", ".lora_embedding_A", ".lora_embedding_B", True),
            ):
                if name.endswith(suffix_a):
                    module = name[: -len(suffix_a)]
                    key_b = key[: -len(suffix_a)] + suffix_b
                    if key_b not in self._reader:
                        raise UnsupportedRepoError(
                            f"{self.folder}: {key} has no matching {suffix_b}."
                        )
                    self._factors[f"{module}.weight"] = (key, key_b, self._scale(module), transpose)
                    break
            else:
                if name.endswith(".lora_B.bias"):
                    # lora_bias=True: peft's lora_B is a Linear with a bias, so the adapter also
                    # shifts the base layer's bias by scale * lora_B.bias (peft's merge does so).
                    module = name[: -len(".lora_B.bias")]
                    self._biases[f"{module}.bias"] = (key, self._scale(module))
                    continue
                if ".lora_" in name:
                    continue  # B halves are handled with their A
                # modules_to_save: a full replacement tensor for the base tensor of that name.
                # ".base_layer." is the base weight peft saves beside LoRA'd embeddings
                # (save_embedding_layers, e.g. after resizing the vocabulary): also a replacement.
                self._overrides[
                    name.replace(".modules_to_save.default", "")
                    .replace(".modules_to_save", "")
                    .replace(".base_layer", "")
                ] = key
        if not self._factors and not self._overrides:
            raise UnsupportedRepoError(f"{self.folder}: the adapter holds no LoRA tensors.")

    @property
    def names(self) -> list[str]:
        """Base tensor names this adapter changes (LoRA bias deltas included)."""
        return sorted(set(self._factors) | set(self._overrides) | set(self._biases))

    def plain_names(self) -> list[str]:
        """Base tensor names this adapter changes by LoRA factors alone (no ``modules_to_save``
        replacement, no bias delta): :meth:`lowrank` is their whole delta."""
        return sorted(set(self._factors) - set(self._overrides) - set(self._biases))

    def is_embedding(self, base_name: str) -> bool:
        """Whether peft stores this tensor's factors as an embedding's (``lora_embedding_A/B``)."""
        entry = self._factors.get(base_name)
        return entry is not None and entry[0].endswith("lora_embedding_A")

    @property
    def bias_names(self) -> list[str]:
        """Base bias tensors a ``lora_bias=True`` adapter shifts (``module.bias``)."""
        return sorted(self._biases)

    def check_biases(self, base_names: Iterable[str], base_label: str) -> None:
        """Refuse a ``lora_bias=True`` adapter whose target layers have no bias in the base.

        Its bias delta would have nowhere to go, and dropping it gives a wrong model (peft refuses
        to merge such an adapter too), so it is an error, raised before anything is computed.
        """
        have = set(base_names)
        missing = [n for n in self._biases if n not in have]
        if missing:
            raise LoraBiasError(
                f"Adapter {self.folder} was trained with lora_bias=True, but the base {base_label} "
                f"has no bias for {len(missing)} of its layers (e.g. {missing[0]!r}), so its bias "
                "delta cannot be applied. Merge it into a base whose layers have biases, or "
                "retrain it with lora_bias=False."
            )

    def bias_delta(self, base_name: str) -> torch.Tensor | None:
        """``scale * lora_B.bias`` for a ``lora_bias=True`` adapter's bias tensor, else None."""
        entry = self._biases.get(base_name)
        if entry is None:
            return None
        key, scale = entry
        return self._reader.get(key).to(torch.float32) * scale

    def factors(self, base_name: str) -> LoraFactors | None:
        entry = self._factors.get(base_name)
        if entry is None:
            return None
        key_a, key_b, scale, transpose = entry
        return LoraFactors(
            A=self._reader.get(key_a), B=self._reader.get(key_b), scale=scale, transpose=transpose
        )

    def lowrank(
        self,
        base_name: str,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        coefficient: float = 1.0,
    ) -> LoraFactors | None:
        """The factors of ``coefficient · delta`` for one base tensor, ready to use: in ``dtype``
        on ``device``, the adapter's scale (and ``coefficient``) folded into B (``scale`` 1),
        ``transpose`` set where the base tensor is laid out the other way (embeddings, GPT-2's
        Conv1D / ``fan_in_fan_out``), so ``left @ right`` is the delta in the base's layout.

        None when the tensor has no LoRA factors (untouched, or only replaced or shifted).
        """
        entry = self._factors.get(base_name)
        if entry is None:
            return None
        key_a, key_b, scale, transpose = entry
        a = self._reader.get(key_a).to(device=device, dtype=dtype)
        b = self._reader.get(key_b).to(device=device, dtype=dtype) * (coefficient * scale)
        return LoraFactors(A=a, B=b, scale=1.0, transpose=transpose)

    def override(self, base_name: str) -> torch.Tensor | None:
        key = self._overrides.get(base_name)
        return None if key is None else self._reader.get(key)

    def delta(
        self, base_name: str, base_tensor: torch.Tensor, *, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor | None:
        """Dense delta for one base tensor, or None when the adapter leaves it untouched.

        A tensor can carry both a full replacement and LoRA factors: peft saves an embedding's
        ``base_layer`` beside its factors (``save_embedding_layers``) and loads it over the base's,
        so the effective weight is replacement + scale·B·A, and the delta is relative to that.
        """
        bias = self.bias_delta(base_name)
        if bias is not None:
            if tuple(bias.shape) != tuple(base_tensor.shape):
                raise IncompatibleModelsError(
                    f"Adapter {self.folder} shifts {base_name!r} with shape {tuple(bias.shape)} "
                    f"but the base tensor has shape {tuple(base_tensor.shape)}: it was trained on "
                    "another base."
                )
            return bias.to(device=base_tensor.device, dtype=dtype)
        factors = self.factors(base_name)
        replacement = self.override(base_name)
        if factors is None and replacement is None:
            return None
        delta: torch.Tensor | None = None
        if replacement is not None:
            if tuple(replacement.shape) != tuple(base_tensor.shape):
                raise IncompatibleModelsError(
                    f"Adapter {self.folder} replaces {base_name!r} with shape "
                    f"{tuple(replacement.shape)} but the base tensor has shape "
                    f"{tuple(base_tensor.shape)} (a resized vocabulary?): merge it with the base "
                    "it was trained on."
                )
            delta = replacement.to(device=base_tensor.device, dtype=dtype) - base_tensor.to(dtype)
        if factors is not None:
            low = factors.dense(dtype=dtype, device=base_tensor.device)
            if tuple(low.shape) != tuple(base_tensor.shape):
                raise IncompatibleModelsError(
                    f"Adapter {self.folder} changes {base_name!r} with shape {tuple(low.shape)} "
                    f"but the base tensor has shape {tuple(base_tensor.shape)}: it was trained on another base."
                )
            delta = low if delta is None else delta + low
        return delta
