"""Can these models be merged with this base? Checked from headers and small files only.

A merge of mismatched models either crashes half-way through writing shards or, worse, produces
a model that loads and talks nonsense (a different tokenizer vocabulary maps the same ids to other
words). Everything here reads configs, tokenizer files and safetensors *headers* (shapes through
:class:`~hub_merge.tensors.CheckpointReader`), never the model weights, so it is cheap enough to
run before every merge. Adapters' A/B factors are read (they are small) to get their shapes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import IncompatibleModelsError
from .hub import PulledModel
from .tensors import CheckpointReader, LoraAdapterReader

# Config fields that change what the tensors mean even when their shapes agree.
SEMANTIC_FIELDS = (
    "model_type",
    "architectures",
    "rope_theta",
    "tie_word_embeddings",
    "hidden_act",
)


@dataclass(frozen=True)
class Problem:
    """One reason a candidate cannot be merged with the base."""

    model: str
    base: str
    what: str  # the tensor or field that differs
    detail: str

    def __str__(self) -> str:
        return f"{self.model} vs base {self.base}: {self.what}: {self.detail}"


def _config(model: PulledModel) -> dict[str, Any]:
    path = model.path / "config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def vocab_view(folder: Path) -> tuple[str, Any] | None:
    """A comparable view of a tokenizer's vocabulary: (source, value) or None without files."""
    tok = folder / "tokenizer.json"
    if tok.is_file():
        data = json.loads(tok.read_text(encoding="utf-8"))
        model = data.get("model") or {}
        vocab = model.get("vocab")
        if isinstance(vocab, list):  # Unigram: [[piece, score], ...]
            vocab = {piece[0]: i for i, piece in enumerate(vocab)}
        added = {t["content"]: t["id"] for t in data.get("added_tokens") or []}
        return "tokenizer.json", {**(vocab or {}), **added}
    for name in ("vocab.json", "tokenizer.model", "vocab.txt"):
        path = folder / name
        if path.is_file():
            return name, hashlib.sha256(path.read_bytes()).hexdigest()
    return None


def _vocab_problem(base: PulledModel, cand: PulledModel) -> Problem | None:
    a, b = vocab_view(base.path), vocab_view(cand.path)
    if a is None or b is None:
        return None  # adapters usually ship no tokenizer; shapes still guard the embeddings
    if a[0] != b[0]:
        return Problem(
            cand.id, base.id, "tokenizer", f"different tokenizer files ({b[0]} vs {a[0]})"
        )
    if a[1] == b[1]:
        return None
    if isinstance(a[1], dict):
        va, vb = a[1], b[1]
        diff = sorted(set(va.items()) ^ set(vb.items()), key=lambda kv: (kv[1], kv[0]))
        token, _ = diff[0]
        detail = (
            f"vocabularies differ ({len(vb)} vs {len(va)} tokens; e.g. {token!r} is id "
            f"{vb.get(token)} in the candidate and {va.get(token)} in the base)"
        )
    else:
        detail = f"{a[0]} differs"
    return Problem(cand.id, base.id, "tokenizer vocabulary", detail)


def _full_problems(
    base: PulledModel, cand: PulledModel, base_reader: CheckpointReader
) -> list[Problem]:
    problems: list[Problem] = []
    bc, cc = _config(base), _config(cand)
    for key in SEMANTIC_FIELDS:
        # Architecture fields must match exactly; the others only when both configs state them
        # (defaults are often left out, and transformers versions write different subsets).
        stated = key in ("model_type", "architectures") or (key in bc and key in cc)
        if stated and bc.get(key) != cc.get(key):
            problems.append(
                Problem(cand.id, base.id, f"config.{key}", f"{cc.get(key)!r} vs {bc.get(key)!r}")
            )
    if problems and any(p.what in ("config.model_type", "config.architectures") for p in problems):
        return problems  # different architectures: tensor-level noise would hide the point
    reader = CheckpointReader(cand.path)
    missing = [n for n in base_reader.names if n not in reader]
    extra = [n for n in reader.names if n not in base_reader]
    if missing:
        problems.append(
            Problem(
                cand.id,
                base.id,
                f"tensor {missing[0]}",
                f"missing from the candidate ({len(missing)} tensors missing)",
            )
        )
    if extra:
        problems.append(
            Problem(
                cand.id,
                base.id,
                f"tensor {extra[0]}",
                f"not in the base ({len(extra)} extra tensors)",
            )
        )
    for name in base_reader.names:
        if name in reader and reader.shape(name) != base_reader.shape(name):
            problems.append(
                Problem(
                    cand.id,
                    base.id,
                    f"tensor {name}",
                    f"shape {reader.shape(name)} vs {base_reader.shape(name)}",
                )
            )
    return problems


def _same_base(adapter_base: str | None, base: PulledModel) -> bool:
    if not adapter_base:
        return False
    if base.repo_id and adapter_base == base.repo_id:
        return True
    local = Path(adapter_base).expanduser()
    if local.is_absolute() or adapter_base.startswith("."):
        try:
            return local.resolve() == base.path.resolve()
        except OSError:
            return False
    return False


def _adapter_problems(
    base: PulledModel, cand: PulledModel, base_reader: CheckpointReader
) -> list[Problem]:
    info = cand.adapter
    declared = info.base_model if info else cand.base_model
    if not _same_base(declared, base):
        return [
            Problem(
                cand.id,
                base.id,
                "adapter_config.base_model_name_or_path",
                f"the adapter was trained on {declared!r}, not on this base",
            )
        ]
    if base.revision and cand.base_revision and base.revision != cand.base_revision:
        return [
            Problem(
                cand.id,
                base.id,
                "adapter_config.revision",
                f"the adapter pins base commit {cand.base_revision[:12]}, the base is at {base.revision[:12]}",
            )
        ]
    problems: list[Problem] = []
    reader = LoraAdapterReader(cand.path)
    for name in reader.names:
        if name not in base_reader:
            problems.append(
                Problem(
                    cand.id,
                    base.id,
                    f"tensor {name}",
                    "the adapter targets a tensor the base does not have",
                )
            )
            continue
        want = base_reader.shape(name)
        factors = reader.factors(name)
        if factors is not None:
            out, inp = int(factors.B.shape[0]), int(factors.A.shape[1])
            got = (inp, out) if factors.transpose else (out, inp)
        else:
            override = reader.override(name)
            got = tuple(override.shape) if override is not None else want
        if tuple(got) != tuple(want):
            problems.append(
                Problem(
                    cand.id,
                    base.id,
                    f"tensor {name}",
                    f"adapter delta shape {tuple(got)} vs base {tuple(want)}",
                )
            )
    return problems


def compatibility_problems(base: PulledModel, candidates: list[PulledModel]) -> list[Problem]:
    """Every reason each candidate cannot be merged with ``base`` (empty when all can)."""
    if base.kind != "full":
        return [
            Problem(base.id, base.id, "kind", "the merge base must be a full model, not an adapter")
        ]
    base_reader = CheckpointReader(base.path)
    problems: list[Problem] = []
    for cand in candidates:
        if cand.kind == "adapter":
            problems += _adapter_problems(base, cand, base_reader)
        else:
            problems += _full_problems(base, cand, base_reader)
        vocab = _vocab_problem(base, cand)
        if vocab is not None:
            problems.append(vocab)
    return problems


def check_compatible(base: PulledModel, candidates: list[PulledModel]) -> None:
    """Raise :class:`IncompatibleModelsError` listing every mismatch, or return quietly.

    >>> check_compatible(pull("org/base"), [pull("org/expert"), pull("org/lora")])  # doctest: +SKIP
    """
    problems = compatibility_problems(base, candidates)
    if problems:
        raise IncompatibleModelsError(
            f"{len(problems)} incompatibilit{'y' if len(problems) == 1 else 'ies'} with the base "
            f"{base.id}; drop or replace these models:" + IncompatibleModelsError.listing(problems)
        )
