"""The test, demo and benchmark model zoos: a base model, its fine-tuned experts and LoRA adapters,
and tasks.

Merging needs a family of related models: one base and several children that each learned
something the others did not. The Hub is unreachable from tests and CI, so the family is built
here, deterministically, and cached on disk:

- the **tiny zoo** (``build_tiny_zoo``, :mod:`.tiny`): a 2-layer Llama with a byte-level
  tokenizer, pre-trained for a few seconds, then fine-tuned (full experts) and LoRA-tuned
  (adapters) on four synthetic string tasks. Seconds to build; for tests.
- the **smol zoo** (``build_smol_zoo``, :mod:`.smol`): SmolLM2-135M and four LoRA experts, one per
  task. Minutes to build; the realistic demo.
- the **smol-wide zoo** (``build_smol_wide_zoo``, :mod:`.wide`): the smol zoo's base and tasks
  with 2-3 experts per task (other seeds, other training subsets, another LoRA rank, one full
  fine-tune), so that kinship has related and unrelated experts to tell apart. Built only by the
  benchmarks, never in CI.

Every zoo lives in ``<cache>/zoo/<name>`` with a ``zoo.json`` manifest (:mod:`.record`), built
atomically under a file lock. :mod:`.tasks` holds the task generators, :mod:`.train` the training
loop, :mod:`.upload` the push of a zoo to a Hub.
"""

from __future__ import annotations

from .record import MANIFEST, REPO_OWNER, Zoo, cached_build, default_cache_dir, load_zoo
from .smol import SMOL_NAME, SMOL_ORIGIN, build_smol_zoo
from .tasks import SMOL_TASKS, TASKS, TINY_TASKS, make_examples
from .tiny import TINY_NAME, build_tiny_zoo
from .upload import UploadedZoo, upload_zoo
from .wide import WIDE_NAME, build_smol_wide_zoo

__all__ = [
    "MANIFEST",
    "REPO_OWNER",
    "SMOL_NAME",
    "SMOL_ORIGIN",
    "SMOL_TASKS",
    "TASKS",
    "TINY_NAME",
    "TINY_TASKS",
    "UploadedZoo",
    "WIDE_NAME",
    "Zoo",
    "cached_build",
    "build_smol_wide_zoo",
    "build_smol_zoo",
    "build_tiny_zoo",
    "default_cache_dir",
    "load_zoo",
    "make_examples",
    "upload_zoo",
]
