"""Model kinship: how similar the task vectors (deltas from a shared base) of N models are.

Hu et al., "Exploring Model Kinship for Merging LLMs" (2024) define the kinship of two fine-tunes
of one base as the Pearson correlation (or cosine similarity, or Euclidean distance) of their
flattened task vectors over every floating-point tensor of the base. All three metrics come from
the same sums over the shared parameters: n, Σx_i and the Gram matrix Σx_i·x_j. So the whole N×N
matrix needs ONE pass over the tensors, accumulating per tensor one N×N matmul and N sums in
float64; no flattened model ever exists (the paper's code concatenates whole deltas per pair, which
needs >100 GB for 7B models and N(N-1)/2 passes).

LoRA adapters stay factored (delta = U @ V with U = scale·B, V = A, or the transpose for
embeddings): ⟨U1V1, U2V2⟩ = sum((U1ᵀU2) ⊙ (V1V2ᵀ)), Σ(UV) = (1ᵀU)(V1) and ⟨UV, D⟩ = sum(U ⊙ (DVᵀ))
cost r×r or r×numel work, never a dense B·A.

Models are "sources": a model folder, a peft adapter folder, or an in-memory state dict (the greedy
search compares merged children it holds in memory). See :func:`kinship_matrix`.
"""

from __future__ import annotations

import io
import json
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch

from .errors import KinshipError
from .layers import layer_index
from .tensors import CheckpointReader, LoraAdapterReader, is_adapter_folder, resolve_device

__all__ = [
    "GROUPS",
    "KinshipResult",
    "KinshipSource",
    "KinshipStats",
    "Metric",
    "StateDictSource",
    "FolderSource",
    "AdapterSource",
    "as_source",
    "kinship",
    "kinship_matrix",
    "layer_index",
    "self_kinship",
    "tensor_group",
]

Metric = Literal["pearson", "cosine", "euclidean"]
METRICS: tuple[str, ...] = get_args(Metric)

# Named tensor groups, first match wins; a tensor matching none is "other". The patterns cover
# Llama/Mistral/Qwen/Gemma (model.layers.N.self_attn/mlp), GPT-2 (h.N.attn/mlp, wte), GPT-NeoX
# (attention, embed_in/embed_out) and Falcon/BLOOM (self_attention, word_embeddings).
GROUPS: dict[str, re.Pattern[str]] = {
    "embeddings": re.compile(
        r"(^|\.)(embed_tokens|wte|wpe|word_embeddings|embed_in|embed_positions)\."
    ),
    "lm_head": re.compile(r"(^|\.)(lm_head|embed_out)\."),
    "attention": re.compile(r"\.(self_attn|self_attention|attention|attn|cross_attn)\."),
    "mlp": re.compile(r"\.(mlp|feed_forward|ffn|block_sparse_moe|experts)\."),
    "norm": re.compile(r"(norm|ln_\w*|layernorm)[^.]*\.(weight|bias)$"),
}
# Tensors whose dim 0 is the vocabulary: the paper truncates these to the base's vocabulary.
_VOCAB_TENSOR = re.compile(
    r"(^|\.)(embed_tokens|wte|word_embeddings|embed_in|lm_head|embed_out)\.weight$"
)
# Elements per chunk in the dense accumulation (per model, float64): bounds temporary memory, and
# keeps the skinny (N+1)×chunk Gram matmul in cache (4x faster on CPU than 1M-element chunks).
_CHUNK = 1 << 16
# Bytes read through one checkpoint handle before it is closed (its pages count in RSS while open).
_RELEASE_BYTES = 16 << 20


def tensor_group(name: str) -> str:
    """The named group of a tensor (one of ``GROUPS`` or ``"other"``)."""
    for group, pattern in GROUPS.items():
        if pattern.search(name):
            return group
    return "other"


# --- accumulated sums and metrics -------------------------------------------------------------


@dataclass
class KinshipStats:
    """The sufficient statistics of N task vectors over a set of parameters.

    ``n`` parameters, per-model ``sums`` (Σx_i) and the ``gram`` matrix (Σx_i·x_j), float64.
    Stats of disjoint parameter sets add up, which is what makes groups and layers consistent.
    """

    n: int
    sums: np.ndarray  # (N,)
    gram: np.ndarray  # (N, N)

    @classmethod
    def zeros(cls, size: int) -> KinshipStats:
        return cls(0, np.zeros(size), np.zeros((size, size)))

    def __add__(self, other: KinshipStats) -> KinshipStats:
        return KinshipStats(self.n + other.n, self.sums + other.sums, self.gram + other.gram)

    def matrix(self, metric: Metric = "pearson") -> np.ndarray:
        """The N×N kinship matrix; NaN where a model's delta is constant (undefined)."""
        _check_metric(metric)
        gram, sums = self.gram, self.sums
        if metric == "euclidean":
            sq = np.diag(gram)[:, None] + np.diag(gram)[None, :] - 2.0 * gram
            out = np.sqrt(np.clip(sq, 0.0, None))
            np.fill_diagonal(out, 0.0)
            return out
        cov = gram - np.outer(sums, sums) / self.n if metric == "pearson" else gram
        scale = np.sqrt(np.clip(np.diag(cov), 0.0, None))
        with np.errstate(divide="ignore", invalid="ignore"):
            out = cov / np.outer(scale, scale)
        out[np.outer(scale, scale) == 0] = np.nan
        return np.clip(out, -1.0, 1.0)

    def to_dict(self) -> dict:
        return {"n": self.n, "sums": self.sums.tolist(), "gram": self.gram.tolist()}


def self_kinship(metric: str) -> float:
    """A model's kinship with itself: distance 0 for Euclidean, correlation 1 otherwise."""
    _check_metric(metric)
    return 0.0 if metric == "euclidean" else 1.0


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise KinshipError(f"Unknown kinship metric {metric!r}: use one of {', '.join(METRICS)}.")


def _jsonable(matrix: np.ndarray) -> list[list[float | None]]:
    return [[None if math.isnan(v) else float(v) for v in row] for row in matrix]


@dataclass
class KinshipResult:
    """A kinship matrix with the per-group and per-layer breakdowns it was accumulated from.

    Examples:
        >>> result = kinship_matrix([a, b, c], base)  # doctest: +SKIP
        >>> result.pair("a", "b"), result.mean_pairwise()  # doctest: +SKIP
    """

    names: list[str]
    metric: str
    matrix: np.ndarray
    n_params: int
    stats: KinshipStats
    group_stats: dict[str, KinshipStats] = field(default_factory=dict)
    layer_stats: dict[int, KinshipStats] = field(default_factory=dict)

    @property
    def groups(self) -> dict[str, np.ndarray]:
        """Kinship per named tensor group (attention, mlp, embeddings, norm, lm_head, other)."""
        return {g: s.matrix(self.metric) for g, s in self.group_stats.items()}  # type: ignore[arg-type]

    @property
    def layers(self) -> dict[int, np.ndarray]:
        """Kinship per transformer block index: where two models differ."""
        return {i: s.matrix(self.metric) for i, s in sorted(self.layer_stats.items())}  # type: ignore[arg-type]

    def _index(self, name: str | int) -> int:
        if isinstance(name, int):
            return name
        try:
            return self.names.index(name)
        except ValueError:
            raise KinshipError(
                f"No model named {name!r} here; have {', '.join(self.names)}."
            ) from None

    def pair(self, a: str | int, b: str | int) -> float:
        return float(self.matrix[self._index(a), self._index(b)])

    def mean_pairwise(self, members: Iterable[str | int] | None = None) -> float:
        """Kinship of a group of models: the mean over its distinct pairs (paper's convention)."""
        idx = sorted({self._index(m) for m in (members if members is not None else self.names)})
        values = [self.matrix[i, j] for k, i in enumerate(idx) for j in idx[k + 1 :]]
        return float(np.mean(values)) if values else float("nan")

    def to_dict(self) -> dict:
        return {
            "names": list(self.names),
            "metric": self.metric,
            "n_params": self.n_params,
            "matrix": _jsonable(self.matrix),
            "groups": {g: _jsonable(m) for g, m in self.groups.items()},
            "layers": {str(i): _jsonable(m) for i, m in self.layers.items()},
        }

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def table(self, *, title: str | None = None, matrix: np.ndarray | None = None):
        """A rich Table of the matrix (or of a breakdown matrix given as ``matrix``)."""
        from rich.table import Table

        values = self.matrix if matrix is None else matrix
        table = Table(title=title or f"Model kinship ({self.metric}, {self.n_params:,} parameters)")
        table.add_column("")
        for name in self.names:
            table.add_column(name, justify="right")
        for name, row in zip(self.names, values, strict=True):
            table.add_row(name, *("n/a" if math.isnan(v) else _fmt(v, self.metric) for v in row))
        return table

    def layer_table(self):
        """A rich Table of per-layer kinship: one row per block, one column per model pair."""
        from rich.table import Table

        pairs = [(i, j) for i in range(len(self.names)) for j in range(i + 1, len(self.names))]
        table = Table(title=f"Kinship per layer ({self.metric})")
        table.add_column("layer", justify="right")
        for i, j in pairs:
            table.add_column(f"{self.names[i]} / {self.names[j]}", justify="right")
        for layer, m in self.layers.items():
            table.add_row(str(layer), *(_fmt(m[i, j], self.metric) for i, j in pairs))
        return table

    def __str__(self) -> str:
        from rich.console import Console

        buffer = io.StringIO()
        Console(file=buffer, width=120, color_system=None).print(self.table())
        return buffer.getvalue()


def _fmt(value: float, metric: str) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:.4g}" if metric == "euclidean" else f"{value:+.4f}"


# --- sources ----------------------------------------------------------------------------------


class _Store(ABC):
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


class _DictStore(_Store):
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


class _FolderStore(_Store):
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


def _store(obj: str | Path | Mapping[str, torch.Tensor] | _Store, label: str = "base") -> _Store:
    if isinstance(obj, _Store):
        return obj
    if isinstance(obj, Mapping):
        return _DictStore(obj, label)
    folder = Path(obj)
    if not folder.is_dir():
        raise KinshipError(f"{folder} is not a model folder.")
    if is_adapter_folder(folder):
        raise KinshipError(f"{folder} is a LoRA adapter; the base must be a full model.")
    return _FolderStore(folder)


@dataclass
class _Dense:
    """Full weights of one tensor, read by row ranges, so a large tensor is never whole in memory."""

    read: Callable[[int, int], torch.Tensor]  # (start, stop) -> rows, native dtype, any device


@dataclass
class _LowRank:
    """delta[rows, cols] = U @ V in float64; U (R, r), V (r, C)."""

    U: torch.Tensor
    V: torch.Tensor


_Term = _Dense | _LowRank | None  # full weights / factored delta / zero delta


class KinshipSource(ABC):
    """One model whose task vector enters the kinship matrix."""

    name: str

    def check(self, base: _Base) -> None:  # noqa: B027 - optional hook
        """Raise KinshipError when this model cannot share ``base`` (called before the pass)."""

    @abstractmethod
    def term(self, name: str, base: _Base, device: torch.device) -> _Term:
        """This model's delta for base tensor ``name``: dense weights, factored, or None (zero)."""

    def release(self) -> None:  # noqa: B027 - optional hook
        """Drop file mappings after a tensor."""


class _FullSource(KinshipSource):
    def __init__(self, store: _Store, name: str) -> None:
        self.store = store
        self.name = name

    def check(self, base: _Base) -> None:
        have = set(self.store.names)
        missing = [n for n in base.names if n not in have]
        if missing:
            raise KinshipError(
                f"{self.name} has no tensor {missing[0]!r} of the base ({len(missing)} missing): it "
                "is another architecture, so it has no kinship with the base's fine-tunes."
            )
        for n in base.names:
            base.fit_shape(n, self.store.shape(n), self.name)

    def term(self, name: str, base: _Base, device: torch.device) -> _Term:
        # Rows are read within the base's rows only: a larger vocabulary is truncated for free.
        return _Dense(partial(self.store.rows, name))

    def release(self) -> None:
        self.store.release()


class StateDictSource(_FullSource):
    """A full model held in memory as a state dict (e.g. a merged child during a search)."""

    def __init__(self, state_dict: Mapping[str, torch.Tensor], name: str = "model") -> None:
        super().__init__(_DictStore(state_dict, name), name)


class FolderSource(_FullSource):
    """A full model folder of safetensors (single file or sharded)."""

    def __init__(self, folder: str | Path, name: str | None = None) -> None:
        super().__init__(_FolderStore(Path(folder)), name or Path(folder).name)


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

    def check(self, base: _Base) -> None:
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
            if factors is not None:
                out, inn = factors.B.shape[0], factors.A.shape[1]
                base.fit_shape(n, (inn, out) if factors.transpose else (out, inn), self.name)
            override = self.reader.override(n)
            if override is not None:
                base.fit_shape(n, tuple(override.shape), self.name)

    def term(self, name: str, base: _Base, device: torch.device) -> _Term:
        if name not in self._names:
            return None
        rows = base.shape(name)[0] if base.shape(name) else None
        bias = self.reader.bias_delta(name)
        if bias is not None:  # lora_bias=True: the bias shifts by scale * lora_B.bias
            full = base.store.get(name).to(torch.float64) + bias.to(torch.float64)
            return _Dense(lambda start, stop: full[start:stop])
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
            return _Dense(lambda start, stop: full if full.dim() == 0 else full[start:stop])
        assert factors is not None
        a = factors.A.to(device=device, dtype=torch.float64)  # (r, in)
        b = factors.B.to(device=device, dtype=torch.float64) * factors.scale  # (out, r)
        # delta = b @ a, or (b @ a).T = a.T @ b.T for embeddings / fan_in_fan_out.
        u, v = (a.T, b.T) if factors.transpose else (b, a)
        return _LowRank(u[:rows], v)


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


class _Base:
    """The shared base: the tensors kinship runs over, shape rules, and an optional Hub id."""

    def __init__(self, store: _Store, include: Sequence[str] | None, base_id: str | None) -> None:
        self.store = store
        self.base_id = base_id
        self.all_names = set(store.names)
        self._shapes: dict[str, tuple[int, ...]] = {}
        wanted = [_selector(p) for p in include or []]
        self.names = [
            n
            for n in store.names
            if store.is_float(n) and (not wanted or any(w(n) for w in wanted))
        ]
        if not self.names:
            raise KinshipError(
                f"No floating-point tensor of the base matches {list(include or [])}: groups are "
                f"{', '.join(GROUPS)}, 'other', or a regular expression over tensor names."
            )

    def shape(self, name: str) -> tuple[int, ...]:
        if name not in self._shapes:
            self._shapes[name] = self.store.shape(name)
        return self._shapes[name]

    def fit_shape(self, name: str, shape: tuple[int, ...], who: str) -> None:
        want = self.shape(name)
        if tuple(shape) == want:
            return
        larger_vocab = (
            _VOCAB_TENSOR.search(name) is not None
            and len(shape) == len(want) >= 1
            and shape[1:] == want[1:]
            and shape[0] > want[0]
        )
        if not larger_vocab:
            raise KinshipError(
                f"{who}: tensor {name!r} has shape {tuple(shape)} but the base's is {want}; models "
                "of different shapes have no common base, so no kinship."
            )


def _selector(pattern: str):
    """A predicate over tensor names: a group name (see ``GROUPS``, or "other") or a regex."""
    if pattern in GROUPS or pattern == "other":
        return lambda name: tensor_group(name) == pattern
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise KinshipError(
            f"Bad tensor group {pattern!r}: not one of {', '.join(GROUPS)}, other, nor a regular "
            f"expression ({err})."
        ) from None
    return lambda name: regex.search(name) is not None


# --- the one pass -----------------------------------------------------------------------------


def _tensor_stats(
    terms: list[_Term],
    read_base: Callable[[int, int], torch.Tensor],
    shape: tuple[int, ...],
    device: torch.device,
) -> KinshipStats:
    """Sums and Gram matrix of one tensor's N deltas, float64, without any N×numel copy."""
    size = len(terms)
    numel = math.prod(shape)
    rows = shape[0] if shape else 1
    cols = numel // rows if rows else 0
    gram = torch.zeros((size, size), dtype=torch.float64, device=device)
    sums = torch.zeros(size, dtype=torch.float64, device=device)
    dense = [i for i, t in enumerate(terms) if isinstance(t, _Dense)]
    low = [i for i, t in enumerate(terms) if isinstance(t, _LowRank)]
    # Factored × factored: r×r products only.
    for k, i in enumerate(low):
        ti = terms[i]
        assert isinstance(ti, _LowRank)
        sums[i] = ti.U.sum(0) @ ti.V.sum(1)
        for j in low[k:]:
            tj = terms[j]
            assert isinstance(tj, _LowRank)
            gram[i, j] = gram[j, i] = ((ti.U.T @ tj.U) * (ti.V @ tj.V.T)).sum()
    if dense:
        readers = [terms[i].read for i in dense]  # type: ignore[union-attr]
        # Bigger chunks on a GPU: fewer host-to-device copies; memory there is not the CPU cache.
        chunk = _CHUNK if device.type == "cpu" else _CHUNK * 64
        step = max(1, chunk // max(cols, 1))
        idx = torch.tensor(dense, device=device)
        # One reused float64 buffer of k delta chunks plus a row of ones: a single matmul then
        # gives the Gram block (top-left) and the per-model sums (last column) together.
        k = len(dense)
        width = min(rows, step) * cols
        buffer = torch.empty((k + 1, width), dtype=torch.float64, device=device)
        buffer[k].fill_(1.0)
        base64 = torch.empty(width, dtype=torch.float64, device=device)
        block = torch.zeros((k + 1, k), dtype=torch.float64, device=device)
        cross = torch.zeros((len(low), k), dtype=torch.float64, device=device)
        for r0 in range(0, rows, step):
            r1 = min(rows, r0 + step)
            m = (r1 - r0) * cols
            b = base64[:m]
            b.copy_(read_base(r0, r1).reshape(-1))
            xf = buffer[:, :m]  # (k + 1, chunk)
            for j, read in enumerate(readers):
                # upcast, then subtract in float64: two vectorised passes beat one mixed-dtype op
                xf[j].copy_(read(r0, r1).reshape(-1))
                xf[j].sub_(b)
            block.addmm_(xf, xf[:k].T)  # (k + 1, k): Gram rows, then sums
            x = xf[:k].view(k, r1 - r0, cols)
            for c, i in enumerate(low):  # dense × factored: ⟨D, UV⟩ = sum(U ⊙ (D Vᵀ))
                t = terms[i]
                assert isinstance(t, _LowRank)
                cross[c] += ((x @ t.V.T) * t.U[r0:r1]).sum((1, 2))  # (k,)
        gram[idx[:, None], idx[None, :]] = block[:k]
        sums[idx] = block[k]
        for c, i in enumerate(low):
            gram[idx, i] = gram[i, idx] = cross[c]
        del buffer, base64
    return KinshipStats(numel, sums.cpu().numpy(), gram.cpu().numpy())


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
    _check_metric(metric)
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
    store = _store(base)
    if base_id is None and isinstance(store, _FolderStore):
        base_id = _hub_id_of_folder(store.reader.folder)
    base_info = _Base(store, include, base_id)
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
        stats = _tensor_stats(terms, partial(store.rows, name), base_info.shape(name), dev)
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
