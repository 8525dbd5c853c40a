"""``hub-merge plan``: everything that would make a merge fail, found before any weight is downloaded.

A user's top complaint about mergekit is an error that surfaces after twenty minutes of
downloading. A plan reads only what is small: each model's file listing, ``config.json``,
``adapter_config.json``, the tokenizer files and the card (license), and the safetensors
*headers* (tensor names, shapes, dtypes) through HTTP range requests on the resolve URLs
(``HfApi.parse_safetensors_file_metadata``: the first 100 kB of each weight file, more only for
huge headers). Local folders are read the same way from disk (headers only).

It reports every incompatibility at once (layer count, tensor shapes, vocabulary, missing
tensors, the method's input contract, the adapters' base, conflicting licenses, pickle-only or
remote-code repos) and estimates download bytes, disk, peak RAM/VRAM and time. ``merge`` and
``search`` run it first, so they fail in seconds.

Layout: ``meta`` (reading one model), ``report`` (issues and the plan), ``checks`` (pair and
method checks), ``estimate`` (bytes and time) and ``planner`` (the entry points).
"""

from __future__ import annotations

from .checks import check_method
from .estimate import DOWNLOAD_BYTES_PER_S, MERGE_BYTES_PER_S
from .meta import PLAN_FILES, ModelMeta, read_model
from .planner import plan_models, plan_recipe, preflight_search
from .report import Issue, MergePlan

__all__ = [
    "DOWNLOAD_BYTES_PER_S",
    "MERGE_BYTES_PER_S",
    "PLAN_FILES",
    "Issue",
    "MergePlan",
    "ModelMeta",
    "check_method",
    "plan_models",
    "plan_recipe",
    "preflight_search",
    "read_model",
]
