"""The inputs of a MoE assembly: a base and its experts, checked and opened as tensor sources.

Everything the output checkpoint cannot hold is refused here, before anything is read or
written: a base the output architecture is not built from (:mod:`.arch`), biases it has no place
for, and experts whose layer count, vocabulary, hidden size or MLP shapes differ from the base's.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, IncompatibleModelsError, UnsupportedRepoError
from ..merge.inputs import CheckpointSource, TensorSource, open_source
from ..tensors import is_adapter_folder
from .arch import AUTO, MIXTRAL_PROJ, SUPPORTED, OutputArch, choose

SUPPORTED_TYPES = tuple(AUTO)
MAX_EXPERTS = 8
# The three projections of a Llama/Qwen MLP and their Mixtral names (w1 gate, w3 up, w2 down).
MLP_PROJ = MIXTRAL_PROJ
_MLP = re.compile(r"^model\.layers\.(\d+)\.mlp\.(gate_proj|up_proj|down_proj)\.weight$")


def mlp_name(name: str) -> tuple[int, str] | None:
    """``(layer, projection)`` for a dense MLP weight name, else None."""
    m = _MLP.match(name)
    return (int(m.group(1)), m.group(2)) if m else None


def _config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise UnsupportedRepoError(f"{folder} has no config.json. {SUPPORTED}.")
    return json.loads(path.read_text())


@dataclass
class MoeExpert:
    """One expert: its display name, where it came from, and its weights as base + delta."""

    name: str
    folder: Path
    source: TensorSource
    is_adapter: bool
    repo_id: str | None = None
    revision: str | None = None


def check_base_config(cfg: dict[str, Any], where: str, output_arch: str = "auto") -> OutputArch:
    """The output architecture for this base; refuse what it cannot express, naming what is."""
    arch = choose(output_arch, cfg.get("model_type"), where)
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise UnsupportedRepoError(
            f"{where} has attention output or MLP biases, which {arch.architecture} has no "
            f"weights for; {SUPPORTED}."
        )
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise UnsupportedRepoError(
            f"{where} uses activation {act!r}; {arch.architecture} experts use silu."
        )
    return arch


_MUST_MATCH = ("num_hidden_layers", "vocab_size", "hidden_size", "intermediate_size")


def open_experts(
    base: Path,
    experts: list[tuple[str, Path, str | None, str | None]],
    output_arch: str = "auto",
) -> tuple[CheckpointSource, dict[str, Any], list[MoeExpert]]:
    """Open the base and each ``(name, folder, repo_id, revision)`` expert; check they fit.

    Raises:
        ConfigError: fewer than one or more than eight experts, or duplicate names.
        UnsupportedRepoError: the base's architecture cannot become ``output_arch``.
        IncompatibleModelsError: an expert differs from the base in layers, vocabulary or shapes.
    """
    if not 1 <= len(experts) <= MAX_EXPERTS:
        raise ConfigError(
            f"Give 1 to {MAX_EXPERTS} experts (2 or more for a useful MoE; got {len(experts)}). {SUPPORTED}."
        )
    names = [e[0] for e in experts]
    if len(set(names)) != len(names):
        raise ConfigError(f"Expert names must be unique; got {names}.")
    cfg = _config(base)
    check_base_config(cfg, str(base), output_arch)
    base_src = CheckpointSource(base)
    mlp = [n for n in base_src.names if mlp_name(n)]
    if len(mlp) != 3 * int(cfg["num_hidden_layers"]):
        raise UnsupportedRepoError(
            f"{base} does not have gate/up/down MLP weights in every layer; {SUPPORTED}."
        )
    opened: list[MoeExpert] = []
    for name, folder, repo_id, revision in experts:
        adapter = is_adapter_folder(folder)
        if not adapter:
            other = _config(folder)
            if other.get("model_type") != cfg.get("model_type"):
                raise IncompatibleModelsError(
                    f"Expert {name} is a {other.get('model_type')!r} model but the base is "
                    f"{cfg.get('model_type')!r}; every expert must share the base's architecture."
                )
            for key in _MUST_MATCH:
                if other.get(key) != cfg.get(key):
                    raise IncompatibleModelsError(
                        f"Expert {name} has {key}={other.get(key)} but the base has "
                        f"{cfg.get(key)}; {SUPPORTED}, all with the same layers, vocabulary "
                        "and MLP shapes."
                    )
        src = open_source(folder, base_src)
        for tensor in base_src.names:
            if tensor not in src.names:
                raise IncompatibleModelsError(f"Expert {name} has no tensor {tensor!r}.")
            if tuple(src.shape(tensor)) != tuple(base_src.shape(tensor)):
                raise IncompatibleModelsError(
                    f"Expert {name}'s {tensor} has shape {tuple(src.shape(tensor))}, the base's "
                    f"{tuple(base_src.shape(tensor))}; {SUPPORTED}."
                )
        opened.append(MoeExpert(name, folder, src, adapter, repo_id, revision))
    return base_src, cfg, opened
