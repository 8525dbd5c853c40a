"""Rough download, disk, peak memory and time estimates of a merge, from tensor headers only."""

from __future__ import annotations

import math

from .meta import ModelMeta

# Rough throughputs for the time estimate (2-core CPU figures from benchmarks/RESULTS.md).
DOWNLOAD_BYTES_PER_S = 50e6
MERGE_BYTES_PER_S = {"linear": 400e6, "sparse": 120e6}


def size_estimates(
    metas: list[ModelMeta],
    ref: ModelMeta | None,
    method: str | None,
    out_layers: int | None = None,
    token_rows: tuple[dict[str, int], int] | None = None,
) -> dict[str, float]:
    download = sum(m.download_bytes for m in metas)
    inputs = sum(m.weight_bytes for m in metas)
    tensors = dict(ref.tensors) if ref else {}
    if token_rows is not None:  # a tokenizer merge: one row per output token (padded)
        axes, rows = token_rows
        for name, axis in axes.items():
            if name in tensors and axis < len(tensors[name][0]):
                shape, size = tensors[name]
                tensors[name] = (tuple(shape[:axis]) + (rows,) + tuple(shape[axis + 1 :]), size)
    out_bytes = sum(math.prod(s) * size for s, size in tensors.values())
    if out_layers is not None and ref is not None and ref.layers:
        # slices: the tensors outside the layers once, plus the reference's mean layer size
        # times the output's layer count
        from ..layers import layer_index

        in_layers = sum(
            math.prod(s) * size for n, (s, size) in tensors.items() if layer_index(n) is not None
        )
        out_bytes = out_bytes - in_layers + in_layers / ref.layers * out_layers
    largest = max((math.prod(s) for s, _ in tensors.values()), default=0)
    n = len(metas)
    # Streaming merge: per input a tensor in flight plus the read-ahead (3), float32 working set
    # (deltas, masks, result) and the write-behind queue, plus the interpreter and torch.
    ram = 4 * largest * (4 * n + 6) + 400e6
    vram = 4 * largest * (n + 4)
    sparse = method not in (None, "linear", "slerp", "nuslerp", "passthrough")
    seconds = (
        download / DOWNLOAD_BYTES_PER_S
        + inputs / MERGE_BYTES_PER_S["sparse" if sparse else "linear"]
    )
    return {
        "download_bytes": float(download),
        "disk_bytes": float(download + out_bytes),
        "output_bytes": float(out_bytes),
        "peak_ram_bytes": float(ram),
        "peak_vram_bytes": float(vram),
        "seconds": float(seconds),
    }
