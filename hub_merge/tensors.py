"""Lazy tensor access over safetensors checkpoints and peft LoRA adapters.

Merges and kinship walk a model one tensor at a time, so a 70B merge never needs a whole model in
memory: shards are memory-mapped through ``safetensors.safe_open`` and a tensor is read only when
asked for. A LoRA adapter is kept in factored form (B, A, scale) keyed by the *base* tensor name it
changes, so callers can use the cheap factored path (kinship) or materialise ``scale * B @ A`` for
one tensor at a time (merges). Pickle checkpoints are never read here.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from .errors import (
    IncompatibleModelsError,
    LoraBiasError,
    UnsafeWeightsError,
    UnsupportedRepoError,
)

SAFE_SINGLE = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"

_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``: how recipes, mergekit YAML and configs spell it."""
    return str(dtype).removeprefix("torch.")


def _refuse_unsafe(folder: Path) -> None:
    pickles = sorted(p.name for p in folder.glob("*.bin")) + sorted(
        p.name for p in folder.glob("*.pt")
    )
    ggufs = sorted(p.name for p in folder.glob("*.gguf"))
    if pickles:
        raise UnsafeWeightsError(
            f"{folder} has only pickle weights ({', '.join(pickles[:3])}); hub-merge reads "
            "safetensors only. Pull it with allow_pickle=True (CLI: `hub-merge pull FOLDER_OR_ID "
            "--allow-pickle`), which converts it once to safetensors and gives that folder."
        )
    if ggufs:
        raise UnsupportedRepoError(
            f"{folder} holds GGUF weights ({', '.join(ggufs[:3])}), which cannot be merged "
            "directly. Load it with transformers (gguf_file=...) and save_pretrained it first."
        )
    raise UnsupportedRepoError(
        f"No safetensors weights in {folder}: expected {SAFE_SINGLE}, {SAFE_INDEX}, or "
        f"{ADAPTER_WEIGHTS} beside {ADAPTER_CONFIG}."
    )


class CheckpointReader:
    """Read tensors of one safetensors checkpoint (single file or sharded) lazily, by name.

    Examples:
        >>> reader = CheckpointReader("path/to/model")  # doctest: +SKIP
        >>> reader.shape("model.embed_tokens.weight")  # doctest: +SKIP
        (256, 64)
    """

    def __init__(self, folder: str | Path, *, weights_file: str | None = None) -> None:
        self.folder = Path(folder)
        self._where: dict[str, Path] = {}
        self._handles: dict[Path, object] = {}
        if weights_file is not None:
            files = [self.folder / weights_file]
        elif (self.folder / SAFE_INDEX).is_file():
            index = json.loads((self.folder / SAFE_INDEX).read_text())
            files = sorted({self.folder / f for f in index["weight_map"].values()})
        elif (self.folder / SAFE_SINGLE).is_file():
            files = [self.folder / SAFE_SINGLE]
        else:
            files = sorted(self.folder.glob("*.safetensors"))
            if not files:
                _refuse_unsafe(self.folder)
        for file in files:
            if not file.is_file():
                raise UnsupportedRepoError(f"Shard {file.name} listed in {self.folder} is missing.")
            handle = self._open(file)
            for name in handle.keys():
                self._where[name] = file

    def _open(self, file: Path):
        handle = self._handles.get(file)
        if handle is None:
            handle = safe_open(str(file), framework="pt", device="cpu")
            self._handles[file] = handle
        return handle

    @property
    def names(self) -> list[str]:
        return list(self._where)

    def __contains__(self, name: object) -> bool:
        return name in self._where

    def __len__(self) -> int:
        return len(self._where)

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def _slice(self, name: str):
        try:
            file = self._where[name]
        except KeyError:
            raise IncompatibleModelsError(
                f"Tensor {name!r} is missing from {self.folder}."
            ) from None
        return self._open(file).get_slice(name)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._slice(name).get_shape())

    def dtype(self, name: str) -> torch.dtype:
        return _DTYPES[self._slice(name).get_dtype()]

    def numel(self, name: str) -> int:
        return math.prod(self.shape(name))

    def get(
        self, name: str, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        if name not in self._where:
            raise IncompatibleModelsError(f"Tensor {name!r} is missing from {self.folder}.")
        tensor = self._open(self._where[name]).get_tensor(name)
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        return tensor.to(device) if str(device) != "cpu" else tensor

    def get_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` (dim 0) of a tensor, read without loading the rest of it."""
        piece = self._slice(name)
        if not piece.get_shape():
            return self.get(name)
        return piece[start:stop]

    def release(self) -> None:
        """Close the open shard handles; they reopen lazily on the next read.

        A handle keeps every page it has read memory-mapped, so walking a whole checkpoint through
        one handle grows the process's RSS by the checkpoint's size. One-pass walks over many
        models (kinship, streaming merges) call this after each tensor to stay at a few tensors.
        """
        self._handles.clear()

    def metadata(self) -> dict[str, str]:
        meta: dict[str, str] = {}
        for handle in self._handles.values():
            meta.update(handle.metadata() or {})
        return meta

    def nbytes(self) -> int:
        return sum(self.numel(n) * _itemsize(self.dtype(n)) for n in self._where)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


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


class LoraAdapterReader:
    """A peft LoRA adapter folder, exposed by the base-model tensor names it changes."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        cfg_path = self.folder / ADAPTER_CONFIG
        if not cfg_path.is_file():
            raise UnsupportedRepoError(f"{self.folder} is not a peft adapter: no {ADAPTER_CONFIG}.")
        self.config: dict = json.loads(cfg_path.read_text())
        peft_type = str(self.config.get("peft_type", "LORA")).upper()
        if peft_type != "LORA":
            raise UnsupportedRepoError(
                f"{self.folder} is a {peft_type} adapter; hub-merge merges LoRA adapters only."
            )
        if self.config.get("use_dora"):
            raise UnsupportedRepoError(
                f"{self.folder} is a DoRA adapter, whose delta is not scale*B@A; merge it into its "
                "base with peft (merge_and_unload) and use the full model instead."
            )
        weights = self.folder / ADAPTER_WEIGHTS
        if not weights.is_file():
            _refuse_unsafe(self.folder)
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


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"``: CUDA when present, else CPU. Shared by merge, kinship and evaluation."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def is_adapter_folder(folder: str | Path) -> bool:
    return (Path(folder) / ADAPTER_CONFIG).is_file()


# --- writing ------------------------------------------------------------------------------------

_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}
DEFAULT_SHARD_BYTES = 5 * 1024**3


@dataclass(frozen=True)
class TensorPlan:
    """Where one output tensor goes: shard number, byte range inside that shard's data."""

    shard: int
    start: int
    end: int


class ShardedWriter:
    """Write a checkpoint as safetensors shards laid out in advance, then finalise atomically.

    Why hand-written: ``safetensors.torch.save_file`` needs a whole shard's tensors in memory at
    once. A merge knows every output name, shape and dtype before it starts, so the shard layout
    and headers can be written first and each tensor's bytes written at its offset the moment it is
    merged; peak memory is then one tensor, not one shard. The files are standard safetensors
    (8-byte little-endian header size, JSON header, data) and are read back by ``safe_open``.

    Everything goes to a temporary folder beside ``out`` (same file system) that is renamed to
    ``out`` by :meth:`finalize`; :meth:`abort` (or an exception inside ``with``) removes it, so an
    interrupted write leaves nothing that looks like a model.

    Examples:
        >>> with ShardedWriter("out", {"w": ((2, 2), torch.float32)}) as w:  # doctest: +SKIP
        ...     w.write("w", torch.ones(2, 2))
    """

    def __init__(
        self,
        out: str | Path,
        layout: dict[str, tuple[tuple[int, ...], torch.dtype]],
        *,
        max_shard_bytes: int = DEFAULT_SHARD_BYTES,
        metadata: dict[str, str] | None = None,
        overwrite: bool = False,
    ) -> None:
        import tempfile

        self.out = Path(out)
        if self.out.exists() and not overwrite and any(self.out.iterdir()):
            raise FileExistsError(
                f"{self.out} already exists and is not empty; choose another --out or overwrite."
            )
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.partial-", dir=self.out.parent))
        self.overwrite = overwrite
        self.metadata = {"format": "pt", **(metadata or {})}
        self.layout = dict(layout)
        self.plan: dict[str, TensorPlan] = {}
        self._written: set[str] = set()
        shards: list[list[str]] = [[]]
        sizes = [0]
        for name, (shape, dtype) in self.layout.items():
            nbytes = math.prod(shape) * _itemsize(dtype)
            if shards[-1] and sizes[-1] + nbytes > max_shard_bytes:
                shards.append([])
                sizes.append(0)
            self.plan[name] = TensorPlan(len(shards) - 1, sizes[-1], sizes[-1] + nbytes)
            shards[-1].append(name)
            sizes[-1] += nbytes
        n = len(shards)
        self.files = (
            [SAFE_SINGLE]
            if n == 1
            else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        )
        self._handles = []
        self._data_start: list[int] = []
        try:
            for i, names in enumerate(shards):
                header: dict[str, object] = {"__metadata__": self.metadata}
                for name in names:
                    shape, dtype = self.layout[name]
                    p = self.plan[name]
                    header[name] = {
                        "dtype": _DTYPE_NAMES[dtype],
                        "shape": list(shape),
                        "data_offsets": [p.start, p.end],
                    }
                raw = json.dumps(header, separators=(",", ":")).encode()
                raw += b" " * (-len(raw) % 8)  # safetensors pads the header to 8 bytes
                fh = open(self.tmp / self.files[i], "wb")  # noqa: SIM115 - closed in finalize/abort
                self._handles.append(fh)
                fh.write(len(raw).to_bytes(8, "little"))
                fh.write(raw)
                fh.truncate(8 + len(raw) + sizes[i])
                self._data_start.append(8 + len(raw))
            self.total_size = sum(sizes)
        except BaseException:
            self.abort()
            raise

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Write one planned tensor (any device; cast to the planned dtype)."""
        shape, dtype = self.layout[name]
        if tuple(tensor.shape) != tuple(shape):
            raise ValueError(
                f"{name}: shape {tuple(tensor.shape)} differs from planned {tuple(shape)}"
            )
        p = self.plan[name]
        data = tensor.detach().to(device="cpu", dtype=dtype).contiguous()
        buf = data.reshape(-1).view(torch.uint8).numpy() if data.numel() else b""
        fh = self._handles[p.shard]
        fh.seek(self._data_start[p.shard] + p.start)
        fh.write(memoryview(buf))
        self._written.add(name)

    def add_file(self, name: str, content: bytes | str) -> None:
        """Put a side file (config, tokenizer...) into the output before it is finalised."""
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)

    def finalize(self) -> Path:
        """Check every tensor was written, write the index, and move the folder into place."""
        import shutil

        missing = [n for n in self.layout if n not in self._written]
        if missing:
            self.abort()
            raise IncompatibleModelsError(
                f"Output incomplete: {len(missing)} tensor(s) never written, e.g. {missing[0]!r}."
            )
        for fh in self._handles:
            fh.flush()
            fh.close()
        self._handles = []
        if len(self.files) > 1:
            index = {
                "metadata": {"total_size": self.total_size},
                "weight_map": {n: self.files[p.shard] for n, p in self.plan.items()},
            }
            (self.tmp / SAFE_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True))
        old = None
        if self.out.exists():
            old = self.out.with_name(f".{self.out.name}.old-{self.tmp.name.rsplit('-', 1)[-1]}")
            self.out.rename(old)
        self.tmp.rename(self.out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.out

    def abort(self) -> None:
        """Remove everything written so far."""
        import shutil

        for fh in self._handles:
            try:
                fh.close()
            except OSError:
                pass
        self._handles = []
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> ShardedWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif self.tmp.exists():
            self.finalize()
