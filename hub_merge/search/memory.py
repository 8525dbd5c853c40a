"""How much memory the search's state-dict cache may hold (``--max-memory``, or a share of free).

A node dropped from the cache is merged again from its inputs when the search needs it, so the
cache's size trades memory for time; these helpers turn the user's size into bytes and pick a
default from what the device has free.
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import ConfigError

MEMORY_SHARE = 0.25  # of free memory, for the state-dict cache when --max-memory is not given


def default_max_memory(session: Any, share: float = MEMORY_SHARE) -> int:
    """Bytes the state-dict cache may hold: ``share`` of the device's free memory, at least one
    state dict (a smaller cache could not hold a merge's result).

    A node dropped from the cache is merged again from its inputs when the search needs it (a
    child, a kinship), so more is faster, but only up to what the machine has free: a quarter
    leaves room for the scoring model, the base copy, activations and whatever else runs.
    """
    import torch

    state = session.base.state
    size = sum(t.numel() * t.element_size() for t in state.values()) or 1
    device = torch.device(session.device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
    else:
        free = available_ram()
        if free is None:
            return 4 * size
    return max(size, int(share * free))


_UNITS = {"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12}
_UNITS.update({"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "k": 1e3, "m": 1e6})
_UNITS.update({"g": 1e9, "t": 1e12})


def parse_bytes(value: int | str) -> int:
    """``3GB``, ``512MiB``, ``2.5g`` or a number of bytes -> bytes; anything else: ConfigError."""
    if isinstance(value, bool):
        raise ConfigError(f"--max-memory takes a size such as 3GB or 512MB; got {value!r}.")
    if isinstance(value, int):
        number, unit = float(value), ""
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
        if not match or match.group(2).lower() not in _UNITS:
            raise ConfigError(f"--max-memory takes a size such as 3GB or 512MB; got {value!r}.")
        number, unit = float(match.group(1)), match.group(2).lower()
    out = int(number * _UNITS[unit])
    if out < 0:
        raise ConfigError(f"--max-memory must not be negative; got {value!r}.")
    return out


def available_ram() -> int | None:
    """Linux's MemAvailable (free memory plus reclaimable page cache), in bytes, when known."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
