"""Pure rules for model-card metadata (README front matter), as the Hub enforces them.

Two users: the local Hub server (its ``/api/validate-yaml`` endpoint and the README check on
every commit) and the card module (validate before pushing). Keeping the rules in one pure module
means a card hub-merge writes is judged exactly as the local Hub will judge it. No I/O here.

Example:
    >>> meta = parse_front_matter("---\\nbase_model: [a/b, c/d]\\nbase_model_relation: merge\\n---\\n")
    >>> check_card_metadata(meta).ok
    True
    >>> base_model_links(meta)
    [('merge', 'a/b'), ('merge', 'c/d')]
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml
from huggingface_hub.repocard import REGEX_YAML_BLOCK

__all__ = [
    "BASE_MODEL_RELATIONS",
    "KNOWN_LICENSES",
    "CardCheck",
    "FRONT_MATTER_MAX_BYTES",
    "FrontMatterError",
    "base_model_links",
    "check_card_metadata",
    "check_readme",
    "is_valid_repo_id",
    "parse_front_matter",
]

BASE_MODEL_RELATIONS: tuple[str, ...] = ("adapter", "merge", "quantized", "finetune")

# License identifiers the Hub accepts in `license:` (hub-docs repositories-licenses.md).
KNOWN_LICENSES: frozenset[str] = frozenset(
    """apache-2.0 mit openrail bigscience-openrail-m creativeml-openrail-m bigscience-bloom-rail-1.0
    bigcode-openrail-m afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause bsd-3-clause-clear
    c-uda cc cc0-1.0 cc-by-2.0 cc-by-2.5 cc-by-3.0 cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0
    cc-by-nc-3.0 cc-by-nc-4.0 cc-by-nd-4.0 cc-by-nc-nd-3.0 cc-by-nc-nd-4.0 cc-by-nc-sa-2.0
    cc-by-nc-sa-3.0 cc-by-nc-sa-4.0 cdla-sharing-1.0 cdla-permissive-1.0 cdla-permissive-2.0 wtfpl
    ecl-2.0 epl-1.0 epl-2.0 etalab-2.0 eupl-1.1 eupl-1.2 agpl-3.0 gfdl gpl gpl-2.0 gpl-3.0 lgpl
    lgpl-2.1 lgpl-3.0 isc h-research intel-research lppl-1.3c ms-pl apple-ascl apple-amlr mpl-2.0
    odc-by odbl openmdw-1.0 openrail++ osl-3.0 postgresql ofl-1.1 ncsa unlicense zlib pddl lgpl-lr
    deepfloyd-if-license fair-noncommercial-research-license llama2 llama3 llama3.1 llama3.2 llama3.3
    llama4 gemma unknown other""".split()
)

# A Hub repo id: optional namespace, name; letters, digits, '-', '_', '.'; no '--' or '..', no
# leading/trailing '-' or '.', at most 96 characters for the name (huggingface_hub validators).
_REPO_PART = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?"
_REPO_ID_RE = re.compile(rf"^(?:{_REPO_PART}/)?{_REPO_PART}$")

# The Hub reads at most 1 MiB of front matter; a bigger block is refused, never parsed.
FRONT_MATTER_MAX_BYTES = 1024 * 1024
# Nesting deeper than this is refused before the YAML is built (no card needs more than a few).
FRONT_MATTER_MAX_DEPTH = 64


class FrontMatterError(ValueError):
    """The README's YAML front matter cannot be parsed."""


@dataclass
class CardCheck:
    """Result of checking card metadata: errors block a push, warnings do not."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def is_valid_repo_id(value: object) -> bool:
    """True for ``name`` or ``namespace/name`` as the Hub accepts them (e.g. ``org/model-1.5``)."""
    return (
        isinstance(value, str)
        and len(value) <= 96
        and "--" not in value
        and ".." not in value
        and _REPO_ID_RE.match(value) is not None
    )


def parse_front_matter(readme: str) -> dict[str, Any] | None:
    """Return the README's YAML front matter as a dict, or None when it has none.

    The block is found as huggingface_hub finds it (``repocard.REGEX_YAML_BLOCK``: leading blank
    lines allowed). Parsing is bounded, because a README comes from anyone: at most
    ``FRONT_MATTER_MAX_BYTES`` of YAML, nesting at most ``FRONT_MATTER_MAX_DEPTH`` deep, and no
    aliases (``*name``), whose expansion turns a few hundred bytes into gigabytes.

    Raises:
        FrontMatterError: the YAML is malformed, too big, too deep, uses aliases, or is not a
            mapping.
    """
    text = readme.removeprefix("\ufeff")
    # Look for the closing line only within the cap, so a huge README costs no more than that.
    window = text[: FRONT_MATTER_MAX_BYTES + 4096]
    match = REGEX_YAML_BLOCK.search(window)
    if match is None:
        if len(text) > len(window) and window.lstrip().startswith("---"):
            raise FrontMatterError(
                f"README.md front matter is longer than {FRONT_MATTER_MAX_BYTES} bytes (or not "
                "closed by a '---' line): the Hub reads at most 1 MiB of card metadata"
            )
        return None
    block = match.group(2)
    size = len(block.encode("utf-8", "surrogatepass"))
    if size > FRONT_MATTER_MAX_BYTES:
        raise FrontMatterError(
            f"README.md front matter is {size} bytes: the Hub reads at most "
            f"{FRONT_MATTER_MAX_BYTES} bytes (1 MiB) of card metadata"
        )
    try:
        _check_yaml_events(block)
        data = yaml.load(block, Loader=_LOADER)  # noqa: S506 - a safe loader, checked above
    except FrontMatterError:
        raise
    except yaml.YAMLError as err:
        raise FrontMatterError(f"README.md front matter is not valid YAML: {err}") from err
    except (RecursionError, ValueError, OverflowError) as err:
        raise FrontMatterError(f"README.md front matter cannot be read: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise FrontMatterError(
            f"README.md front matter must be a YAML mapping (key: value), got {type(data).__name__}"
        )
    return data


_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _check_yaml_events(block: str) -> None:
    """Refuse aliases and deep nesting from the parser's events, before anything is built."""
    depth = 0
    for event in yaml.parse(block, Loader=_LOADER):
        if isinstance(event, yaml.AliasEvent):
            raise FrontMatterError(
                "README.md front matter uses a YAML alias (*name): the Hub's card metadata "
                "must spell every value out"
            )
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            depth += 1
            if depth > FRONT_MATTER_MAX_DEPTH:
                raise FrontMatterError(
                    f"README.md front matter nests deeper than {FRONT_MATTER_MAX_DEPTH} levels"
                )
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            depth -= 1


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _check_str_or_list(meta: dict[str, Any], key: str, errors: list[str]) -> None:
    if key in meta and meta[key] is not None:
        items = _as_list(meta[key])
        if not all(isinstance(x, str) and x for x in items):
            errors.append(f"'{key}' must be a string or a list of strings, got {meta[key]!r}")


def _check_model_index(value: Any, errors: list[str]) -> None:
    # Shape used by the Hub's evaluation widget (hub-docs model-cards.md, "Evaluation Results").
    if not isinstance(value, list) or not value:
        errors.append("'model-index' must be a non-empty list of {name, results}")
        return
    for i, entry in enumerate(value):
        where = f"model-index[{i}]"
        if not isinstance(entry, dict):
            errors.append(f"{where} must be a mapping with 'name' and 'results'")
            continue
        if not isinstance(entry.get("name"), str) or not entry.get("name"):
            errors.append(f"{where}.name must be a non-empty string (the model name)")
        results = entry.get("results")
        if not isinstance(results, list) or not results:
            errors.append(f"{where}.results must be a non-empty list")
            continue
        for j, result in enumerate(results):
            rwhere = f"{where}.results[{j}]"
            if not isinstance(result, dict):
                errors.append(f"{rwhere} must be a mapping with task, dataset and metrics")
                continue
            task = result.get("task")
            if not isinstance(task, dict) or not isinstance(task.get("type"), str):
                errors.append(f"{rwhere}.task must be a mapping with a string 'type'")
            dataset = result.get("dataset")
            if (
                not isinstance(dataset, dict)
                or not isinstance(dataset.get("type"), str)
                or not isinstance(dataset.get("name"), str)
            ):
                errors.append(f"{rwhere}.dataset must be a mapping with string 'type' and 'name'")
            metrics = result.get("metrics")
            if not isinstance(metrics, list) or not metrics:
                errors.append(f"{rwhere}.metrics must be a non-empty list")
                continue
            for k, metric in enumerate(metrics):
                mwhere = f"{rwhere}.metrics[{k}]"
                if not isinstance(metric, dict) or not isinstance(metric.get("type"), str):
                    errors.append(f"{mwhere} must be a mapping with a string 'type'")
                    continue
                mvalue = metric.get("value")
                if isinstance(mvalue, bool) or not isinstance(mvalue, (int, float, str)):
                    errors.append(f"{mwhere}.value must be a number or a string, got {mvalue!r}")


def check_card_metadata(meta: dict[str, Any] | None, repo_type: str = "model") -> CardCheck:
    """Check card metadata the way the Hub does before accepting a README.

    Rules: ``base_model`` holds valid repo ids; ``base_model_relation`` is one of
    ``adapter | merge | quantized | finetune`` and needs ``base_model``; ``license`` is a Hub
    license id (``other`` wants ``license_name``); ``model-index`` has the evaluation shape;
    ``tags`` / ``datasets`` / ``language`` are strings or lists of strings.
    """
    check = CardCheck()
    if meta is None or meta == {}:
        check.warnings.append("Empty or missing yaml metadata in repo card")
        return check
    errors, warnings = check.errors, check.warnings

    base = meta.get("base_model")
    if base is not None:
        ids = _as_list(base)
        if not ids:
            errors.append("'base_model' must not be an empty list")
        for item in ids:
            if not is_valid_repo_id(item):
                errors.append(f"'base_model' must hold Hub repo ids like 'org/name', got {item!r}")
    relation = meta.get("base_model_relation")
    if relation is not None:
        if relation not in BASE_MODEL_RELATIONS:
            errors.append(
                f"'base_model_relation' must be one of {', '.join(BASE_MODEL_RELATIONS)}; "
                f"got {relation!r}"
            )
        if base is None:
            errors.append("'base_model_relation' is set but 'base_model' is missing")
        elif relation == "merge" and len(_as_list(base)) < 2:
            warnings.append("'base_model_relation: merge' usually lists two or more base models")

    if "license" in meta:
        lic = meta["license"]
        if not isinstance(lic, str) or lic.lower() not in KNOWN_LICENSES:
            errors.append(
                f"'license' must be a Hub license identifier (e.g. apache-2.0, mit, other); "
                f"got {lic!r}"
            )
        elif lic.lower() == "other" and "license_name" not in meta:
            warnings.append("'license: other' should come with 'license_name' and 'license_link'")

    for key in ("tags", "datasets", "language", "metrics"):
        _check_str_or_list(meta, key, errors)
    for key in ("library_name", "pipeline_tag"):
        if key in meta and meta[key] is not None and not isinstance(meta[key], str):
            errors.append(f"'{key}' must be a string, got {meta[key]!r}")

    if "model-index" in meta:
        _check_model_index(meta["model-index"], errors)
    if repo_type == "model" and "library_name" not in meta:
        warnings.append("'library_name' is not set; set it (e.g. transformers, peft)")
    return check


def check_readme(readme: str, repo_type: str = "model") -> CardCheck:
    """Parse and check a whole README.md; a YAML syntax error is reported as an error."""
    try:
        meta = parse_front_matter(readme)
    except FrontMatterError as err:
        return CardCheck(errors=[str(err)])
    return check_card_metadata(meta, repo_type)


def base_model_links(meta: dict[str, Any] | None) -> list[tuple[str, str]]:
    """(relation, base id) pairs that put a repo in the Hub's model tree.

    When ``base_model_relation`` is absent the Hub infers it; we follow its documented hints:
    a peft library or adapter tag means ``adapter``, a merge tag means ``merge``, a GGUF or
    quantized tag means ``quantized``, otherwise ``finetune``.
    """
    if not meta or meta.get("base_model") is None:
        return []
    ids = [x for x in _as_list(meta["base_model"]) if is_valid_repo_id(x)]
    relation = meta.get("base_model_relation")
    if relation not in BASE_MODEL_RELATIONS:
        tags = {str(t).lower() for t in _as_list(meta.get("tags") or [])}
        library = str(meta.get("library_name") or "").lower()
        if library == "peft" or "lora" in tags or "adapter" in tags:
            relation = "adapter"
        elif "merge" in tags or "mergekit" in tags:
            relation = "merge"
        elif library == "gguf" or "gguf" in tags or "quantized" in tags:
            relation = "quantized"
        else:
            relation = "finetune"
    return [(relation, x) for x in ids]
