"""The one atomic-write helper: a file is either its old content or its new content, never half.

Every writer in hub-merge that leaves a file for a user or a resumed run (JSON state, score
caches, cards, plots, manifests) goes through here, so an interrupt or a crash never leaves a
truncated file behind. The temporary file lives in the target's folder (same filesystem, so the
final ``os.replace`` is atomic) and is removed on any failure. A writer that must not leave a
temp file beside the target even after ``kill -9`` (the local Hub's store, whose repo folders are
served as they are) passes ``tmp_dir``: a folder of its own, on the same filesystem, that it
sweeps at start-up.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(
    path: str | Path, *, fsync: bool = False, tmp_dir: str | Path | None = None
) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (or in ``tmp_dir``); on success it replaces
    ``path`` atomically.

    For writers that want a filename (``savefig``, ``shutil.copyfile``, ``save_file``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    where = Path(tmp_dir) if tmp_dir is not None else path.parent
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=where)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(
    path: str | Path, data: bytes | str, *, fsync: bool = False, tmp_dir: str | Path | None = None
) -> None:
    """Write ``data`` (bytes, or text as UTF-8) to ``path`` atomically."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_path(path, fsync=fsync, tmp_dir=tmp_dir) as tmp:
        tmp.write_bytes(payload)


def atomic_write_json(path: str | Path, obj: Any, *, indent: int | None = 1) -> None:
    """Write ``obj`` as JSON (sorted keys, so files diff cleanly) atomically."""
    atomic_write(path, json.dumps(obj, indent=indent, sort_keys=True))
