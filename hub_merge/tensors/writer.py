"""Writing a merged checkpoint as safetensors shards laid out in advance, one tensor at a time."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import IncompatibleModelsError
from .formats import SAFE_INDEX, SAFE_SINGLE, SAFETENSORS_CODES, itemsize

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
            nbytes = math.prod(shape) * itemsize(dtype)
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
                        "dtype": SAFETENSORS_CODES[dtype],
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
