"""What a repo is, decided from its file listing and small JSON files before any download.

A full transformers model, a peft LoRA adapter, or something hub-merge refuses (custom code,
GGUF/ONNX/..., pickle weights without the opt-in), plus the card helpers lineage needs.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import RemoteCodeError, UnsafeWeightsError, UnsupportedRepoError

Kind = Literal["full", "adapter"]

# Small files a merge needs besides the weights (read by transformers / peft / the card writer).
META_FILES = ("config.json", "adapter_config.json", "tokenizer_config.json", "README.md")
_SUPPORT_PATTERNS = (
    "config.json",
    "generation_config.json",
    "adapter_config.json",
    "README.md",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
_SAFE_WEIGHTS = ("model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json")
_SAFE_ADAPTER = ("adapter_model.safetensors",)
_PICKLE_WEIGHTS = (
    "pytorch_model.bin",
    "pytorch_model-*-of-*.bin",
    "pytorch_model.bin.index.json",
    "adapter_model.bin",
)
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# Formats we recognise but cannot merge, with what to do about them.
_OTHER_FORMATS = {
    ".gguf": "GGUF (llama.cpp) weights",
    ".onnx": "ONNX weights",
    ".h5": "TensorFlow/Keras weights",
    ".msgpack": "Flax weights",
    ".tflite": "TFLite weights",
    ".mlmodel": "Core ML weights",
}
# Custom modelling code shipped in a repo: transformers would need trust_remote_code to use it.
_CODE_FILES = re.compile(
    r"^(?:.*/)?(modeling|configuration|tokenization|processing|image_processing)_[\w]+\.py$"
)


# --- what a repo is ----------------------------------------------------------------------------


@dataclass(frozen=True)
class AdapterInfo:
    """What lineage and compatibility need to know about a LoRA adapter."""

    rank: int
    alpha: float
    target_modules: tuple[str, ...] | str | None
    peft_type: str = "LORA"
    base_model: str | None = None
    base_revision: str | None = None  # as written in adapter_config.json ("revision")

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> AdapterInfo:
        targets = cfg.get("target_modules")
        if isinstance(targets, list):
            targets = tuple(sorted(targets))
        rank = int(cfg.get("r", 8))
        return cls(
            rank=rank,
            alpha=float(cfg.get("lora_alpha", rank)),
            target_modules=targets,
            peft_type=str(cfg.get("peft_type", "LORA")).upper(),
            base_model=cfg.get("base_model_name_or_path"),
            base_revision=cfg.get("revision"),
        )


@dataclass(frozen=True)
class RepoLayout:
    """The decision taken from a file listing: the kind of model and the files to download."""

    kind: Kind
    files: tuple[str, ...]
    pickle: bool = False


def _match(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _auto_map(cfg: dict[str, Any] | None) -> dict[str, Any] | None:
    if not cfg:
        return None
    return cfg.get("auto_map") or None


def classify(
    files: Sequence[str],
    *,
    where: str,
    config: dict[str, Any] | None = None,
    tokenizer_config: dict[str, Any] | None = None,
    adapter_config: dict[str, Any] | None = None,
    allow_pickle: bool = False,
) -> RepoLayout:
    """Decide from a repo's file listing and small JSON files what it is and what to download.

    Raises ``RemoteCodeError`` (custom code or ``auto_map``), ``UnsafeWeightsError`` (pickle-only
    weights without ``allow_pickle``) or ``UnsupportedRepoError`` (GGUF, ONNX, ..., or nothing).
    """
    top = [f for f in files if "/" not in f]  # weights and configs of a model live at the root
    code = sorted(f for f in files if _CODE_FILES.match(f))
    auto_map = _auto_map(config) or _auto_map(tokenizer_config)
    if code or auto_map:
        what = ", ".join(code[:3]) if code else f"auto_map {sorted(auto_map or {})}"
        raise RemoteCodeError(
            f"{where} needs custom code to load ({what}); hub-merge never runs remote code "
            "(trust_remote_code). Pick a model that uses a transformers architecture."
        )
    support = [f for f in top if f in _SUPPORT_PATTERNS]
    is_adapter = "adapter_config.json" in top
    if is_adapter:
        peft_type = str((adapter_config or {}).get("peft_type", "LORA")).upper()
        if peft_type != "LORA":
            raise UnsupportedRepoError(
                f"{where} is a {peft_type} adapter; hub-merge merges LoRA adapters only."
            )
        safe = [f for f in top if _match(f, _SAFE_ADAPTER)]
        pickles = [f for f in top if f == "adapter_model.bin"]
        kind: Kind = "adapter"
    else:
        safe = [f for f in top if _match(f, _SAFE_WEIGHTS)]
        if not safe:  # a single oddly named safetensors file is still a checkpoint
            safe = [f for f in top if f.endswith(".safetensors")]
        pickles = [f for f in top if _match(f, _PICKLE_WEIGHTS)]
        kind = "full"
        if safe and "config.json" not in top:
            raise UnsupportedRepoError(
                f"{where} has safetensors weights but no config.json, so its architecture is "
                "unknown. hub-merge needs a transformers model folder or a peft adapter."
            )
    if safe:
        return RepoLayout(kind=kind, files=tuple(sorted(set(support) | set(safe))))
    other_pickles = pickles or [f for f in top if f.endswith(_PICKLE_SUFFIXES)]
    if other_pickles:
        if not allow_pickle:
            raise UnsafeWeightsError(
                f"{where} has only pickle weights ({', '.join(sorted(other_pickles)[:3])}), which "
                "can run arbitrary code when unpickled. Ask its author for safetensors, or pass "
                "allow_pickle=True (CLI: --allow-pickle): hub-merge then loads them with "
                "torch.load(weights_only=True) and converts them once to safetensors."
            )
        if pickles and kind == "full" and "config.json" not in top:
            raise UnsupportedRepoError(
                f"{where} has pickle weights but no config.json, so its architecture is "
                "unknown. hub-merge needs a transformers model folder or a peft adapter."
            )
        if pickles:
            return RepoLayout(
                kind=kind, files=tuple(sorted(set(support) | set(pickles))), pickle=True
            )
    formats = sorted(
        {desc for f in files for suffix, desc in _OTHER_FORMATS.items() if f.endswith(suffix)}
    )
    if formats:
        raise UnsupportedRepoError(
            f"{where} holds {', '.join(formats)}, which hub-merge cannot merge. Use the "
            "transformers (safetensors) version of the model, or convert it and push that."
        )
    raise UnsupportedRepoError(
        f"{where} holds no model weights hub-merge can use: expected model.safetensors (or "
        "sharded model-*.safetensors with an index) and config.json, or a peft adapter "
        "(adapter_config.json + adapter_model.safetensors)."
    )


def card_data_dict(card_data: Any) -> dict[str, Any]:
    """ModelCardData (from model_info / list_models) or a plain dict -> dict."""
    if card_data is None:
        return {}
    if hasattr(card_data, "to_dict"):
        return dict(card_data.to_dict())
    return dict(card_data) if isinstance(card_data, dict) else {}


def card_license(card: dict[str, Any], tags: Iterable[str] = ()) -> str | None:
    lic = card.get("license")
    if lic == "other" and card.get("license_name"):
        return str(card["license_name"])
    if lic:
        return str(lic)
    for tag in tags:
        if tag.startswith("license:"):
            return tag.split(":", 1)[1]
    return None
