"""The only package of hub-merge that talks to the Hugging Face Hub.

Everything goes through the real ``huggingface_hub`` client (``HfApi``, ``snapshot_download``), so
the public Hub, a mirror, and the project's local server (``hub_merge.localhub``) behave alike.
Three promises hold for every function here:

- **Pinned.** A reference is resolved to the exact commit sha before anything is downloaded, and
  files are fetched *at that sha*, so lineage records what was really merged.
- **Minimal and safe.** What a repo is (full model, LoRA adapter, or unusable) is decided from its
  file listing and small JSON files before any weight is downloaded; only the files a merge needs
  are fetched; pickle weights need an explicit opt-in and remote code is always refused.
- **Clear failures, no secrets.** ``huggingface_hub`` errors are mapped in one place
  (:func:`hub_errors`) to :class:`~hub_merge.errors.HubError` / ``AuthError`` with a message that
  says what to do; any token is scrubbed from those messages.

Modules, in import order: ``client`` (endpoint, ``HfApi``, error mapping, token scrubbing),
``layout`` (what a repo is, from its listing), ``convert`` (opt-in pickle -> safetensors),
``pull`` (pinned, filtered, verified downloads; offline cache) and ``discover`` (model tree).
Everything public is importable from ``hub_merge.hub`` as before the split.
"""

from __future__ import annotations

from .client import (
    PUBLIC_ENDPOINT,
    configure_transfers,
    get_api,
    hub_errors,
    is_offline,
    is_public_hub,
    resolve_endpoint,
    scrub,
    translate_error,
    validate_card_on_hub,
)
from .discover import RELATIONS, Candidate, Relation, discover, parse_size
from .layout import AdapterInfo, Kind, RepoLayout, classify
from .pull import PulledModel, inspect_folder, pull, pull_many, resolve_revision

__all__ = [
    "PUBLIC_ENDPOINT",
    "RELATIONS",
    "AdapterInfo",
    "Candidate",
    "Kind",
    "PulledModel",
    "Relation",
    "RepoLayout",
    "classify",
    "configure_transfers",
    "discover",
    "get_api",
    "hub_errors",
    "inspect_folder",
    "is_offline",
    "is_public_hub",
    "parse_size",
    "pull",
    "pull_many",
    "resolve_endpoint",
    "resolve_revision",
    "scrub",
    "translate_error",
    "validate_card_on_hub",
]
