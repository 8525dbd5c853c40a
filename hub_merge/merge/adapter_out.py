"""Merge LoRA adapters of one base into one peft adapter (a push of megabytes, not gigabytes).

For linear and task_arithmetic the merged delta is a weighted sum of ``scale_i * B_i @ A_i``,
which is itself low-rank: stacking the factors (``B = [c_1 s_1 B_1 | c_2 s_2 B_2 ...]``,
``A = [A_1; A_2; ...]``) gives it *exactly* with rank Σ r_i. Optionally it is compressed to a
chosen rank by a truncated SVD computed through two small QRs (never the dense matrix), and the
relative Frobenius error of the compression is reported.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..errors import ConfigError, IncompatibleModelsError, LoraBiasError
from ..tensors import ADAPTER_CONFIG, ADAPTER_WEIGHTS, LoraAdapterReader

ADAPTER_METHODS = ("linear", "task_arithmetic")


@dataclass(frozen=True)
class AdapterMergeResult:
    path: Path
    rank: int
    relative_error: float  # 0.0 for the exact (concatenated) adapter


def _coefficients(
    method: str, weights: Sequence[float], *, normalize: bool | None, lam: float
) -> list[float]:
    if method not in ADAPTER_METHODS:
        raise ConfigError(
            f"Adapter output supports {', '.join(ADAPTER_METHODS)}, not {method!r}; write a full model instead."
        )
    norm = (method == "linear") if normalize is None else normalize
    total = sum(weights)
    div = total if (norm and abs(total) > 1e-8) else 1.0
    return [lam * w / div for w in weights]


def merge_adapters(
    method: str,
    adapters: Sequence[str | Path],
    weights: Sequence[float],
    out: str | Path,
    *,
    normalize: bool | None = None,
    lam: float = 1.0,
    rank: int | None = None,
) -> AdapterMergeResult:
    """Write the ``method`` merge of LoRA ``adapters`` (same base) as one peft adapter folder.

    Args:
        weights: one per adapter (mergekit's ``weight``); linear normalises them by default.
        rank: None = exact (rank Σ r_i); else compress every module to at most ``rank``.

    Raises:
        ConfigError: another method, or mismatched weights. IncompatibleModelsError: adapters
            of different bases or shapes, or with features that are not plain LoRA factors.
    """
    if len(adapters) != len(weights) or not adapters:
        raise ConfigError("Give one weight per adapter (and at least one adapter).")
    coeffs = _coefficients(method, weights, normalize=normalize, lam=lam)
    readers = [LoraAdapterReader(a) for a in adapters]
    bases = {r.base_model for r in readers}
    if len(bases) > 1:
        raise IncompatibleModelsError(
            f"Adapters of different bases cannot form one adapter: {sorted(map(str, bases))}."
        )
    modules = sorted({n for r in readers for n in r.names})
    tensors: dict[str, torch.Tensor] = {}
    total_err = total_norm = 0.0
    out_rank = 0
    for name in modules:
        As, Bs = [], []
        for reader, c in zip(readers, coeffs, strict=True):
            if name in reader.bias_names:
                raise LoraBiasError(
                    f"Adapter {reader.folder} was trained with lora_bias=True; merging adapters "
                    "into one adapter keeps LoRA factors only. Merge it into the full model "
                    "instead (merge_to_folder with the base), where its bias delta is applied."
                )
            if name in reader.names and reader.factors(name) is None:
                raise IncompatibleModelsError(
                    f"{reader.folder}: {name!r} is a full replacement (modules_to_save), not LoRA."
                )
            f = reader.lowrank(name, coefficient=c)  # c · scale folded into B
            if f is None:
                continue
            if f.transpose:
                raise IncompatibleModelsError(
                    f"{reader.folder}: {name!r} uses transposed factors (embedding/fan_in_fan_out); not supported."
                )
            As.append(f.A)
            Bs.append(f.B)
        shapes = {(b.shape[0], a.shape[1]) for a, b in zip(As, Bs, strict=True)}
        if len(shapes) != 1:
            raise IncompatibleModelsError(
                f"Adapters change {name!r} with different shapes {sorted(shapes)}: different bases."
            )
        A, B = torch.cat(As, 0), torch.cat(Bs, 1)  # (R, in), (out, R)
        qb, rb = torch.linalg.qr(B)  # (out, R), (R, R)
        qa, ra = torch.linalg.qr(A.T)  # (in, R), (R, R)
        u, s, vh = torch.linalg.svd(rb @ ra.T)  # singular values of B @ A, never formed densely
        total_norm += float((s**2).sum())
        if rank is not None and rank < A.shape[0]:
            B = qb @ (u[:, :rank] * s[:rank])
            A = (qa @ vh[:rank].T).T
            total_err += float((s[rank:] ** 2).sum())
        out_rank = max(out_rank, A.shape[0])
        tensors[name] = (A, B)
    # Pad every module to one rank so a single r/alpha (scale 1) describes the adapter.
    files: dict[str, torch.Tensor] = {}
    for name, (A, B) in tensors.items():
        pad = out_rank - A.shape[0]
        if pad:
            A = torch.cat([A, A.new_zeros(pad, A.shape[1])], 0)
            B = torch.cat([B, B.new_zeros(B.shape[0], pad)], 1)
        module = name.removesuffix(".weight")
        dtype = readers[0].dtype
        files[f"base_model.model.{module}.lora_A.weight"] = A.to(dtype).contiguous()
        files[f"base_model.model.{module}.lora_B.weight"] = B.to(dtype).contiguous()
    config = dict(readers[0].config)
    config.update(
        r=out_rank,
        lora_alpha=out_rank,  # scale = alpha / r = 1: the coefficients are folded into B
        use_rslora=False,
        rank_pattern={},
        alpha_pattern={},
        target_modules=sorted({n.removesuffix(".weight").rsplit(".", 1)[-1] for n in tensors}),
    )
    out = write_adapter_folder(files, config, out)
    err = math.sqrt(total_err / total_norm) if total_norm else 0.0
    return AdapterMergeResult(path=out, rank=out_rank, relative_error=err)


def write_adapter_folder(
    files: dict[str, torch.Tensor],
    config: dict,
    out: str | Path,
    *,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write a peft adapter folder atomically: a temporary sibling renamed into place.

    The one writer of adapter outputs (merged adapters, swarm adapters): a failure leaves
    nothing behind, and an existing ``out`` is refused before anything is written.
    """
    out = Path(out)
    if out.exists():
        raise ConfigError(f"{out} already exists; choose another output folder.")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        save_file(files, tmp / ADAPTER_WEIGHTS, metadata={"format": "pt", **(metadata or {})})
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True))
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
