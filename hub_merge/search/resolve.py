"""The search's models: pulled once, named, pinned and fingerprinted for the lineage and caches.

Hub models become experts pinned to their commit (``org/name@sha``), so the lineage and the
card name exactly what was merged; local folders keep their resolved path and get a content
fingerprint, so the score cache notices a retrained folder. Expert names come from the repos'
or folders' names, made unique and kept clear of the lineage's reserved ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .state import folder_fingerprint
from .strategy import Expert


@dataclass
class SearchModels:
    """The base and the experts, pulled: where their files are and how the search names them."""

    base: Any  # hub_merge.hub's pulled base (``path``, ``kind``...)
    pulled: list[Any]  # the pulled experts, in the config's order
    base_expert: Expert  # the base as the lineage names it ("base")
    experts: list[Expert]
    fingerprints: dict[str, str]  # source -> content fingerprint, for local folders

    def folders(self) -> dict[str, Any]:
        """Expert source -> its local folder (what the engine reads)."""
        return {e.source: p.path for e, p in zip(self.experts, self.pulled, strict=True)}


def pull_models(config: Any) -> SearchModels:
    """Pull the base and the experts of a ``SearchConfig`` (the search's only downloads)."""
    from .. import hub

    hub_kw = {
        "allow_pickle": config.allow_pickle,
        "endpoint": config.endpoint,
        "token": config.token,
        "cache_dir": config.cache_dir,
    }
    base = hub.pull(config.base, **hub_kw)
    if base.kind != "full":
        raise ConfigError(f"The base {config.base} is an adapter; pass the full base model.")
    pulled = [hub.pull(ref, **hub_kw) for ref in config.experts]
    experts = [original_expert(p, n) for p, n in zip(pulled, unique_names(pulled), strict=True)]
    base_expert = original_expert(base, "base")
    fingerprints = {
        e.source: folder_fingerprint(p.path)
        for e, p in zip([base_expert, *experts], [base, *pulled], strict=True)
        if e.path is not None
    }
    return SearchModels(base, pulled, base_expert, experts, fingerprints)


def original_expert(pulled: Any, name: str) -> Expert:
    if pulled.repo_id:
        return Expert(
            name=name,
            source=f"{pulled.repo_id}@{pulled.revision}",
            is_adapter=pulled.kind == "adapter",
            repo_id=pulled.repo_id,
            revision=pulled.revision,
            license=pulled.license,
        )
    path = str(Path(pulled.path).resolve())
    return Expert(
        name=name,
        source=path,
        is_adapter=pulled.kind == "adapter",
        path=path,
        license=pulled.license,
    )


def unique_names(pulled: list[Any]) -> list[str]:
    names: list[str] = []
    for p in pulled:
        stem = (p.repo_id or str(p.path)).rstrip("/").split("/")[-1] or "model"
        if stem in ("base", "uniform"):
            stem = f"{stem}-expert"
        name, i = stem, 2
        while name in names:
            name, i = f"{stem}-{i}", i + 1
        names.append(name)
    return names


def layer_filters(names: list[str]) -> list[str]:
    """Per layer index, the tensor-name substring selecting that layer (``.layers.3.``, ``h.3.``)."""
    from ..layers import layer_filter, layer_index

    found: dict[int, str] = {}
    for name in names:
        index, text = layer_index(name), layer_filter(name)
        if index is not None and text is not None:
            found.setdefault(index, text)
    return [found[i] for i in sorted(found)]
