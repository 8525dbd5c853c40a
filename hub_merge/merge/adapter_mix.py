"""Mix LoRA adapters factor by factor: ``A = Σ w_j A_j`` and ``B = Σ w_j B_j``, one adapter out.

This is how Model Swarms (Feng et al. 2024) moves LoRA experts: a particle's position is the
adapter's parameters, so a combination of positions combines ``lora_A`` and ``lora_B``
separately, never ``B·A``. The result has the inputs' rank (not Σ r_j as
:mod:`.adapter_out`'s exact sum has) and is a different model from the sum of the deltas. It is a
hub-merge method, not a mergekit one (mergekit merges full tensors), registered by
:mod:`.factor_method`; its recipe is

    method: lora_factor_sum
    base: ./base
    models: [{model: ./lora-a, parameters: {weight: 0.7}}, {model: ./lora-b, parameters: {weight: 0.3}}]

Scales are folded into B (``B_j ← s_j B_j``) so adapters with different ``lora_alpha`` mix as
the adapters peft would load, and the output has scale 1. A module an adapter does not adapt is
a zero pair in that adapter. Adapters must share their base, their ranks and be plain LoRA
(no ``modules_to_save``): otherwise the error says to mix in dense space instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from ..errors import ConfigError, IncompatibleModelsError, LoraBiasError
from ..tensors import LoraAdapterReader, LoraFactors, is_adapter_folder
from .adapter_out import write_adapter_folder
from .factor_method import FACTOR_METHOD, factor_recipe, factor_weights, is_factor_recipe
from .recipe import MergeRecipe

USE_DENSE = "mix them in dense space instead (swarm --space dense)"


class FactorMix:
    """LoRA adapters loaded once (factors on ``device``), mixed factor-wise for any weights.

    Args:
        adapters: peft LoRA adapter folders (or readers) of one base.
        labels: names used in errors (default: the folders).
    """

    def __init__(
        self,
        adapters: Sequence[str | Path | LoraAdapterReader],
        *,
        device: str | torch.device = "cpu",
        labels: Sequence[str] | None = None,
    ) -> None:
        if len(adapters) < 1:
            raise ConfigError("Give at least one LoRA adapter to mix.")
        readers = []
        for i, a in enumerate(adapters):
            label = labels[i] if labels else str(a)
            if isinstance(a, LoraAdapterReader):
                readers.append(a)
                continue
            if not is_adapter_folder(a):
                raise IncompatibleModelsError(
                    f"{label} is a full model, not a LoRA adapter: adapters mix factor-wise only "
                    f"with adapters; {USE_DENSE}."
                )
            readers.append(LoraAdapterReader(a))
        self.readers = readers
        self.labels = list(labels) if labels else [str(r.folder) for r in readers]
        self.device = torch.device(device)
        self._check()
        # (A, scale·B, transpose) per adapter and module, loaded once; None where not adapted.
        self.modules = sorted({n for r in readers for n in r.names})
        self.factors: dict[str, list[tuple[torch.Tensor, torch.Tensor] | None]] = {}
        self.transpose: dict[str, bool] = {}
        for name in self.modules:
            row: list[tuple[torch.Tensor, torch.Tensor] | None] = []
            for r in readers:
                f = r.lowrank(name, device=self.device)
                if f is None:
                    row.append(None)
                    continue
                self.transpose[name] = f.transpose
                row.append((f.A, f.B))
            self.factors[name] = row
        self.dtype = readers[0].dtype

    def _check(self) -> None:
        bases = {r.base_model for r in self.readers}
        if len(bases) > 1:
            raise IncompatibleModelsError(
                f"Adapters of different bases cannot be mixed: {sorted(map(str, bases))}."
            )
        shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...], bool, str]] = {}
        for r, label in zip(self.readers, self.labels, strict=True):
            if r.bias_names:
                raise LoraBiasError(
                    f"{label} was trained with lora_bias=True: its bias delta is not a LoRA "
                    f"factor, so it cannot be mixed factor-wise; {USE_DENSE}."
                )
            for name in r.names:
                f = r.factors(name)
                if f is None:
                    raise IncompatibleModelsError(
                        f"{label} replaces {name!r} in full (modules_to_save): not plain LoRA "
                        f"factors; {USE_DENSE}."
                    )
                got = (tuple(f.A.shape), tuple(f.B.shape), f.transpose, label)
                seen = shapes.setdefault(name, got)
                if seen[:3] != got[:3]:
                    raise IncompatibleModelsError(
                        f"{seen[3]} and {label} adapt {name!r} with different ranks or shapes "
                        f"(A {seen[0]} vs {got[0]}): factors of different ranks cannot be "
                        f"summed; {USE_DENSE}."
                    )

    def check_base(self, shapes: Mapping[str, Sequence[int]]) -> None:
        """Refuse adapters whose modules the base lacks or has in another shape."""
        for name, row in self.factors.items():
            A, B = next(p for p in row if p is not None)
            got = (A.shape[1], B.shape[0]) if self.transpose[name] else (B.shape[0], A.shape[1])
            if name not in shapes or tuple(shapes[name]) != tuple(got):
                have = tuple(shapes[name]) if name in shapes else "no such tensor"
                raise IncompatibleModelsError(
                    f"The adapters change {name!r} as {tuple(got)}, the base has {have}: they "
                    "were trained on another base."
                )

    def mix(self, weights: Sequence[float]) -> dict[str, LoraFactors]:
        """``A = Σ w_j A_j``, ``B = Σ w_j s_j B_j`` per adapted tensor (scale 1), in float32."""
        if len(weights) != len(self.readers):
            raise ConfigError(f"Give one weight per adapter ({len(self.readers)}).")
        out: dict[str, LoraFactors] = {}
        for name, row in self.factors.items():
            ref = next(p for p in row if p is not None)
            A = torch.zeros_like(ref[0])
            B = torch.zeros_like(ref[1])
            for w, pair in zip(weights, row, strict=True):
                if pair is not None:
                    A.add_(pair[0], alpha=float(w))
                    B.add_(pair[1], alpha=float(w))
            out[name] = LoraFactors(A=A, B=B, scale=1.0, transpose=self.transpose[name])
        return out

    def apply(
        self, base: Mapping[str, torch.Tensor], weights: Sequence[float]
    ) -> dict[str, torch.Tensor]:
        """The full state dict ``W_base + B·A`` of the mix (tensors not adapted are shared)."""
        out = dict(base)
        for name, f in self.mix(weights).items():
            if name not in base:
                raise IncompatibleModelsError(
                    f"The adapters change {name!r}, which the base does not have: another base."
                )
            w = base[name]
            delta = f.dense(dtype=torch.float32, device=w.device)
            if tuple(delta.shape) != tuple(w.shape):
                raise IncompatibleModelsError(
                    f"The adapters change {name!r} with shape {tuple(delta.shape)}, the base has "
                    f"{tuple(w.shape)}: they were trained on another base."
                )
            out[name] = (w.to(torch.float32) + delta).to(w.dtype)
        return out

    def write(
        self, weights: Sequence[float], out: str | Path, *, recipe: str | None = None
    ) -> Path:
        """Write the mix as a peft adapter folder (loads with ``PeftModel.from_pretrained``)."""
        files: dict[str, torch.Tensor] = {}
        ranks: dict[str, int] = {}
        for name, f in self.mix(weights).items():
            module = name.removesuffix(".weight")
            kind = ("lora_embedding_A", "lora_embedding_B") if _is_embedding(self, name) else None
            if kind:
                files[f"base_model.model.{module}.{kind[0]}"] = (
                    f.A.to(self.dtype).cpu().contiguous()
                )
                files[f"base_model.model.{module}.{kind[1]}"] = (
                    f.B.to(self.dtype).cpu().contiguous()
                )
            else:
                files[f"base_model.model.{module}.lora_A.weight"] = (
                    f.A.to(self.dtype).cpu().contiguous()
                )
                files[f"base_model.model.{module}.lora_B.weight"] = (
                    f.B.to(self.dtype).cpu().contiguous()
                )
            ranks[module] = f.rank
        config = dict(self.readers[0].config)
        r = max(ranks.values())
        config.update(
            r=r,
            lora_alpha=r,  # scale alpha / r = 1: the scales are folded into B
            use_rslora=False,
            rank_pattern={m: k for m, k in ranks.items() if k != r},
            alpha_pattern={m: k for m, k in ranks.items() if k != r},
            target_modules=sorted({m.rsplit(".", 1)[-1] for m in ranks}),
        )
        meta = {"hub_merge_recipe": recipe} if recipe else None
        return write_adapter_folder(files, config, out, metadata=meta)


def _is_embedding(mix: FactorMix, name: str) -> bool:
    # peft stores an embedding's factors as lora_embedding_A/B, a linear layer's as lora_A/B.
    return any(r.is_embedding(name) for r in mix.readers)


def open_factor_recipe(
    recipe: MergeRecipe,
    folders: Mapping[str, str | Path] | None = None,
    *,
    device: str | torch.device = "cpu",
) -> tuple[FactorMix, list[float]]:
    """Check a ``lora_factor_sum`` recipe and load its adapters; returns (mix, weights).

    ``folders`` maps recipe model strings to local folders (default: they are folders).
    """
    weights = factor_weights(recipe)
    paths = [Path((folders or {}).get(e.model, e.model)) for e in recipe.models]
    for e, p in zip(recipe.models, paths, strict=True):
        if not p.exists():
            raise ConfigError(
                f"{e.model} is not a local folder. Pull it first and pass the folder."
            )
    mix = FactorMix(paths, device=device, labels=[e.model for e in recipe.models])
    return mix, weights


def check_factor_inputs(folders: Sequence[str | Path], labels: Sequence[str] | None = None) -> None:
    """Refuse inputs that cannot be mixed factor-wise (full models, other ranks, other bases).

    Called before a search scores anything; it reads the adapters once (megabytes).
    """
    FactorMix(folders, labels=labels)


def write_factor_recipe(
    recipe: MergeRecipe,
    out: str | Path,
    *,
    folders: Mapping[str, str | Path] | None = None,
    base_folder: str | Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Run a ``lora_factor_sum`` recipe into a peft adapter folder, checked before writing.

    ``folders`` maps the recipe's model strings (``org/name@sha``) to local folders and
    ``base_folder`` is the base's folder (default: the strings are folders).
    """
    import shutil

    from ..tensors import CheckpointReader

    mix, weights = open_factor_recipe(recipe, folders)
    assert recipe.base is not None
    base = CheckpointReader(base_folder or recipe.base)
    mix.check_base({n: base.shape(n) for n in base.names})
    out = Path(out)
    if not out.exists():
        return mix.write(weights, out, recipe=recipe.canonical_json())
    if not overwrite:
        raise ConfigError(f"{out} already exists; choose another output folder (or --overwrite).")
    fresh = mix.write(weights, out.with_name(f".{out.name}.new"), recipe=recipe.canonical_json())
    shutil.rmtree(out)
    fresh.rename(out)
    return out


__all__ = [
    "FACTOR_METHOD",  # the method's name and recipe live in .factor_method; kept importable here
    "USE_DENSE",
    "FactorMix",
    "check_factor_inputs",
    "factor_recipe",
    "factor_weights",
    "is_factor_recipe",
    "open_factor_recipe",
    "write_factor_recipe",
]
