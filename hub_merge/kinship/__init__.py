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

Layout: ``stats`` (the sums and the metrics), ``groups`` (tensor groups and selectors),
``result`` (matrix, breakdowns, tables), ``stores`` / ``sources`` / ``terms`` / ``base`` (what the
pass reads), ``accumulate`` (one tensor's statistics) and ``matrix`` (the public entry points).
"""

from __future__ import annotations

from ..layers import layer_index
from .groups import GROUPS, tensor_group
from .matrix import kinship, kinship_matrix
from .result import KinshipResult
from .sources import (
    AdapterSource,
    ComputedSource,
    FolderSource,
    KinshipSource,
    StateDictSource,
    as_source,
)
from .stats import METRICS, KinshipStats, Metric, self_kinship

__all__ = [
    "GROUPS",
    "KinshipResult",
    "KinshipSource",
    "KinshipStats",
    "METRICS",
    "Metric",
    "StateDictSource",
    "ComputedSource",
    "FolderSource",
    "AdapterSource",
    "as_source",
    "kinship",
    "kinship_matrix",
    "layer_index",
    "self_kinship",
    "tensor_group",
]
