"""The public entry points: :func:`kinship_matrix` (N models, one pass) and :func:`kinship` (two).

They turn what a user passes (folders, adapters, state dicts, names, groups) into sources and a
base, walk the base's tensors once, and add each tensor's statistics into the total, its group
and its layer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path

import torch

from ..errors import KinshipError
from ..layers import layer_index
from ..tensors import resolve_device
from .accumulate import tensor_stats
from .base import KinshipBase
from .groups import tensor_group
from .result import KinshipResult
from .sources import KinshipSource, as_source
from .stats import KinshipStats, Metric, check_metric
from .stores import FolderStore, as_store


def kinship_matrix(
    models: Sequence[object] | Mapping[str, object],
    base: str | Path | Mapping[str, torch.Tensor],
    metric: Metric = "pearson",
    *,
    device: str | torch.device = "auto",
    include: str | Sequence[str] | None = None,
    names: Sequence[str] | None = None,
    base_id: str | None = None,
    progress: bool = False,
) -> KinshipResult:
    """Kinship matrix of N models of one base, in one streaming pass over the base's tensors.

    Args:
        models (`Sequence` or `Mapping[str, ...]`): model folders, peft LoRA adapter folders (of
            ``base``), state dicts, or :class:`KinshipSource` objects; a mapping gives names.
        base (`str`, `Path` or state dict): the shared base model (full weights).
        metric (`str`, *optional*): ``"pearson"`` (default, as in the paper), ``"cosine"`` (sign
            kept, unlike the paper's absolute value) or ``"euclidean"`` (a distance).
        device (`str`, *optional*): ``"auto"`` runs the Gram products on CUDA when available.
        include (`str` or `list[str]`, *optional*): restrict to tensor groups (``attention``,
            ``mlp``, ``embeddings``, ``norm``, ``lm_head``, ``other``) or name regexes.
        names (`list[str]`, *optional*): display names (default: folder names).
        base_id (`str`, *optional*): the base's Hub id; adapters naming another base are refused.
        progress (`bool`, *optional*): show a progress bar over tensors.

    Returns:
        `KinshipResult`: the matrix plus per-group and per-layer breakdowns.

    Raises:
        `KinshipError`: a model lacks base tensors, shapes differ (other than a larger vocabulary,
            which is truncated to the base's as the paper does), or an adapter names another base.

    Examples:
        >>> r = kinship_matrix(["experts/a", "experts/b", "adapters/c"], "base")  # doctest: +SKIP
        >>> print(r)  # doctest: +SKIP
    """
    check_metric(metric)
    if isinstance(models, Mapping):
        names = list(models) if names is None else names
        models = list(models.values())
    models = list(models)
    if not models:
        raise KinshipError("Kinship needs at least one model besides the base.")
    if names is not None and len(names) != len(models):
        raise KinshipError(f"Got {len(names)} names for {len(models)} models.")
    sources = [as_source(m, names[i] if names else None) for i, m in enumerate(models)]
    if not names:
        for i, s in enumerate(sources):
            if isinstance(models[i], Mapping) and s.name == "model":
                s.name = f"model{i}"
    _dedupe([s.name for s in sources], sources)
    if isinstance(include, str):
        include = [include]
    store = as_store(base)
    if base_id is None and isinstance(store, FolderStore):
        base_id = _hub_id_of_folder(store.reader.folder)
    base_info = KinshipBase(store, include, base_id)
    for s in sources:
        s.check(base_info)

    dev = resolve_device(device)
    size = len(sources)
    total = KinshipStats.zeros(size)
    by_group: dict[str, KinshipStats] = {}
    by_layer: dict[int, KinshipStats] = {}
    tensor_names = base_info.names
    if progress:
        from tqdm.auto import tqdm

        tensor_names = tqdm(tensor_names, desc="kinship", unit="tensor")
    for name in tensor_names:
        terms = [s.term(name, base_info, dev) for s in sources]
        stats = tensor_stats(terms, partial(store.rows, name), base_info.shape(name), dev)
        del terms
        for s in sources:
            s.release()
        store.release()
        total = total + stats
        group = tensor_group(name)
        by_group[group] = by_group.get(group, KinshipStats.zeros(size)) + stats
        layer = layer_index(name)
        if layer is not None:
            by_layer[layer] = by_layer.get(layer, KinshipStats.zeros(size)) + stats
    return KinshipResult(
        names=[s.name for s in sources],
        metric=metric,
        matrix=total.matrix(metric),
        n_params=total.n,
        stats=total,
        group_stats=by_group,
        layer_stats=by_layer,
    )


def kinship(
    a: object,
    b: object,
    base: str | Path | Mapping[str, torch.Tensor],
    metric: Metric = "pearson",
    **kwargs,
) -> float:
    """Kinship of two models of one base (see :func:`kinship_matrix`)."""
    return kinship_matrix([a, b], base, metric, **kwargs).pair(0, 1)


def _dedupe(labels: list[str], sources: list[KinshipSource]) -> None:
    seen: dict[str, int] = {}
    for label, s in zip(labels, sources, strict=True):
        count = labels.count(label)
        if count > 1:
            seen[label] = seen.get(label, 0) + 1
            s.name = f"{label}#{seen[label]}"


def _hub_id_of_folder(folder: Path) -> str | None:
    """``org/name`` when ``folder`` is a huggingface_hub cache snapshot (models--org--name/...)."""
    for part in reversed(Path(folder).resolve().parts):
        if part.startswith("models--"):
            return part.removeprefix("models--").replace("--", "/")
    return None
