"""Discover the models derived from a base on the Hub's model tree (``base_model:<relation>:<id>``)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import HubError
from ..refs import ModelRef
from .client import get_api, hub_errors, is_offline
from .layout import card_data_dict, card_license

# --- discover ----------------------------------------------------------------------------------

Relation = Literal["finetune", "adapter", "merge", "quantized"]
RELATIONS: tuple[str, ...] = ("finetune", "adapter", "merge", "quantized")
_SORTS = {
    "downloads": "downloads",
    "likes": "likes",
    "created_at": "created_at",
    "last_modified": "last_modified",
    "trending_score": "trending_score",
}
_DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}


@dataclass(frozen=True)
class Candidate:
    """One model of the base's Hub model tree, as :func:`discover` lists it."""

    id: str
    relation: str
    downloads: int | None = None
    likes: int | None = None
    license: str | None = None
    has_safetensors: bool | None = None
    size: int | None = None  # bytes of safetensors weights, when the Hub says
    sha: str | None = None
    library_name: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _weights_size(info: Any) -> tuple[bool | None, int | None]:
    """(has safetensors, size in bytes) from a listing or model_info entry, None when unknown."""
    st = getattr(info, "safetensors", None)
    siblings = getattr(info, "siblings", None)
    names = [s.rfilename for s in siblings] if siblings else None
    has = None if names is None else any(n.endswith(".safetensors") for n in names)
    size = None
    if siblings and all(
        s.size is not None for s in siblings if s.rfilename.endswith(".safetensors")
    ):
        sizes = [s.size for s in siblings if s.rfilename.endswith(".safetensors")]
        size = sum(sizes) if sizes else None
    if size is None and st is not None and getattr(st, "parameters", None):
        size = sum(n * _DTYPE_BYTES.get(dt, 4) for dt, n in st.parameters.items())
        has = True
    return has, size


def discover(
    base_model: str,
    relations: Sequence[str] = ("finetune", "adapter", "merge"),
    *,
    limit: int = 20,
    sort: str = "downloads",
    license: str | Sequence[str] | None = None,
    max_size: int | None = None,
    safetensors_only: bool = False,
    endpoint: str | None = None,
    token: str | None = None,
) -> list[Candidate]:
    """Candidates derived from ``base_model`` on the Hub's model tree, best first.

    Queries ``base_model:<relation>:<id>`` (the Hub builds it from each card's ``base_model``
    and ``base_model_relation``). ``license`` keeps only those licenses; ``max_size`` (bytes)
    drops models whose weights are larger, and those whose size the Hub does not give.

    >>> [c.id for c in discover("org/base", ["adapter"], limit=5)]  # doctest: +SKIP
    ['org/lora-a', 'org/lora-b']
    """
    ModelRef.parse(base_model)  # validates the id with a clear error
    bad = [r for r in relations if r not in RELATIONS]
    if bad:
        raise HubError(f"Unknown relation(s) {bad}; use any of {list(RELATIONS)}.")
    if sort not in _SORTS:
        raise HubError(f"Unknown sort {sort!r}; use one of {sorted(_SORTS)}.")
    if limit < 1:
        raise HubError(f"limit must be at least 1, got {limit}.")
    if is_offline():
        raise HubError(
            "discover lists models on the Hub, which offline mode (HF_HUB_OFFLINE=1) forbids; unset it."
        )
    licenses = {license} if isinstance(license, str) else set(license or ())
    api = get_api(endpoint, token)
    found: dict[str, Candidate] = {}
    for relation in relations:
        kept = 0
        with hub_errors(
            f"list the {relation}s of {base_model}",
            repo_id=base_model,
            endpoint=endpoint,
            token=token,
        ):
            listing = api.list_models(
                filter=f"base_model:{relation}:{base_model}",
                sort=_SORTS[sort],
                full=True,
                cardData=True,
            )
            for info in listing:
                if info.id in found or info.id == base_model:
                    continue
                card = card_data_dict(getattr(info, "card_data", None))
                lic = card_license(card, info.tags or ())
                if licenses and lic not in licenses:
                    continue
                has, size = _weights_size(info)
                if max_size is not None and size is None:
                    has, size = _weights_size(api.model_info(info.id, files_metadata=True))
                if max_size is not None and (size is None or size > max_size):
                    continue
                if safetensors_only and has is False:
                    continue
                found[info.id] = Candidate(
                    id=info.id,
                    relation=relation,
                    downloads=info.downloads,
                    likes=info.likes,
                    license=lic,
                    has_safetensors=has,
                    size=size,
                    sha=info.sha,
                    library_name=getattr(info, "library_name", None),
                )
                kept += 1
                if kept >= limit:
                    break
    key = {"downloads": lambda c: c.downloads or 0, "likes": lambda c: c.likes or 0}.get(sort)
    out = list(found.values())
    if key is not None:
        out.sort(key=lambda c: (-key(c), c.id))
    return out[:limit]


def parse_size(text: str | int | None) -> int | None:
    """``"1.5GB"``, ``"500MB"``, ``"2GiB"`` or a byte count -> bytes."""
    if text is None or isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?i?b?)\s*", text.lower())
    if not match:
        raise HubError(f"Cannot read size {text!r}; write e.g. 500MB, 1.5GB or a number of bytes.")
    number, unit = float(match.group(1)), match.group(2).rstrip("b")
    base = 1024 if unit.endswith("i") else 1000
    power = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}[unit.rstrip("i")]
    return int(number * base**power)
