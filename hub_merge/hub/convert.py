"""Opt-in pickle weights: load them without running code, convert them once to safetensors.

Many Hub repos still ship only ``pytorch_model.bin`` (or ``adapter_model.bin``). With
``allow_pickle=True`` (CLI ``--allow-pickle``) a pull loads each file with
``torch.load(weights_only=True)``, whose restricted unpickler builds tensors and plain containers
only and refuses any other object (so a pickle cannot run code), and writes the tensors as
safetensors into a folder of the download cache. Every reader of hub-merge (merge, kinship,
evaluation through transformers) then sees an ordinary safetensors model, and later pulls of the
same commit reuse the conversion. Hand-written because neither huggingface_hub nor transformers
exposes "convert this snapshot to safetensors" without loading the model class.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..errors import UnsafeWeightsError
from .layout import RepoLayout

# Converted snapshots live inside the huggingface_hub cache folder of their repo (beside its
# blobs/refs/snapshots, which cache scans ignore), so `hf cache delete` removes them with it.
CONVERTED = "hub-merge-safetensors"
_ADAPTER_BIN, _ADAPTER_SAFE = "adapter_model.bin", "adapter_model.safetensors"


class PickleWeightsWarning(UserWarning):
    """Weights came from a pickle file (loaded with ``weights_only=True``, then converted)."""


def converted_folder_for_repo(repo_cache: Path, sha: str) -> Path:
    """Where the safetensors conversion of a Hub snapshot goes: one folder per commit."""
    return repo_cache / CONVERTED / sha


def converted_folder_for_local(cache: Path, folder: Path, files: Sequence[str]) -> Path:
    """Where a local folder's conversion goes: keyed by its path and its files' sizes and mtimes,
    so retraining the folder in place gives a fresh conversion instead of stale weights."""
    digest = hashlib.sha256(str(folder.resolve()).encode())
    for name in sorted(files):
        stat = (folder / name).stat()
        digest.update(f"\0{name}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return cache / CONVERTED / f"local-{digest.hexdigest()[:24]}"


def _load_tensors(path: Path, where: str) -> dict:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UnsafeWeightsError(
            f"{where}: {path.name} holds more than tensors, so hub-merge will not load it "
            f"(torch.load weights_only refused: {first[:160]}). Ask the author for safetensors."
        ) from None
    if isinstance(state, Mapping) and "state_dict" in state and len(state) == 1:
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise UnsafeWeightsError(
            f"{where}: {path.name} is not a plain state dict of tensors; hub-merge cannot use it."
        )
    # safetensors refuses tensors that share memory (tied weights in a .bin): give each its own.
    seen: set[tuple[int, int]] = set()
    out = {}
    for name, tensor in state.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        out[name] = tensor.clone().contiguous() if key in seen else tensor.contiguous()
        seen.add(key)
    return out


def _convert_into(src: Path, layout: RepoLayout, tmp: Path, where: str) -> list[str]:
    from safetensors.torch import save_file

    pickles = sorted(f for f in layout.files if f.endswith(".bin"))
    support = [
        f for f in layout.files if not f.endswith(".bin") and not f.endswith(".bin.index.json")
    ]
    written: list[str] = []
    if layout.kind == "adapter":
        save_file(_load_tensors(src / _ADAPTER_BIN, where), tmp / _ADAPTER_SAFE, {"format": "pt"})
        written.append(_ADAPTER_SAFE)
    elif len(pickles) == 1:
        save_file(
            _load_tensors(src / pickles[0], where), tmp / "model.safetensors", {"format": "pt"}
        )
        written.append("model.safetensors")
    else:
        import json

        weight_map: dict[str, str] = {}
        total = 0
        for i, name in enumerate(pickles, start=1):
            shard = f"model-{i:05d}-of-{len(pickles):05d}.safetensors"
            tensors = _load_tensors(src / name, where)
            save_file(tensors, tmp / shard, {"format": "pt"})
            weight_map.update(dict.fromkeys(tensors, shard))
            total += sum(t.numel() * t.element_size() for t in tensors.values())
            written.append(shard)
            del tensors
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (tmp / "model.safetensors.index.json").write_text(
            json.dumps(index, indent=2, sort_keys=True)
        )
        written.append("model.safetensors.index.json")
    for name in support:
        if (src / name).is_file():
            shutil.copyfile(src / name, tmp / name)  # follows the cache's symlinks to the blobs
            written.append(name)
    return sorted(written)


def convert_pickle_folder(src: Path, layout: RepoLayout, out: Path, *, where: str) -> list[str]:
    """Give ``out`` a safetensors copy of the pickle model in ``src`` (once); its file names.

    The conversion is written to a temporary folder beside ``out`` and renamed into place, so an
    interrupted conversion leaves nothing that a later pull would take for a finished one.

    Raises:
        UnsafeWeightsError: a file holds anything but tensors (``weights_only`` refuses it).
    """
    if not out.is_dir():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
        try:
            _convert_into(src, layout, tmp, where)
            try:
                os.rename(tmp, out)
            except OSError:  # another process finished the same conversion first: use theirs
                if not out.is_dir():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    warnings.warn(
        f"{where} ships pickle weights only; loaded them with torch.load(weights_only=True) "
        f"because allow_pickle was given, and use their safetensors conversion in {out}.",
        PickleWeightsWarning,
        stacklevel=3,
    )
    return sorted(p.name for p in out.iterdir() if p.is_file())
