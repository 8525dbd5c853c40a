"""The MoE's model card (a Jinja template, like the merge card's), routing plot and ``hub_merge.json``.

``hub_merge.publish`` pushes a MoE folder through its one publish path, with
:func:`write_moe_readme` as the card writer.

The card follows design/model-card.md: ``base_model`` lists the experts' Hub repos (the MoE's
parents; for LoRA experts the adapter repos themselves) with ``base_model_relation: merge``, and
the ``hub_merge`` block records the router mode, the positive prompts' digests, top-k, the active
and total parameter counts, the measured routing and the lineage (base, experts, pinned shas).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from ..atomic import atomic_write
from .router import ROUTER_NOTES, PromptSet
from .routing import measure_routing, plot_routing

MANIFEST = "hub_merge.json"
ROUTING_PNG = "routing.png"
TEMPLATE_NAME = "moe_card_template.md"
ARXIV = {
    "moe": "https://arxiv.org/abs/1701.06538",
    "mixtral": "https://arxiv.org/abs/2401.04088",
}


def license_of(models: Sequence[Any], explicit: str | None) -> str:
    """The MoE's license: the card's one rule (``hub_merge.card.choose_license``), as a string.

    The one given wins; else the parents' (the base and every expert) when they all name the
    same one.
    """
    from ..card.licenses import choose_license

    names = [str(getattr(m, "repo_id", None) or m.path) for m in models]
    choice = choose_license(
        {name: getattr(m, "license", None) for name, m in zip(names, models, strict=True)},
        explicit,
        what="MoE",
    )
    return choice.license_name or choice.license


def is_moe_folder(folder: str | Path) -> bool:
    """A folder written by :func:`~hub_merge.moe.build_moe` (its ``hub_merge.json`` says so)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("kind") == "moe"
    except (json.JSONDecodeError, AttributeError):
        return False


def _lineage(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    base = manifest["base"]
    nodes = [{"id": base["id"], "revision": base["revision"], "kind": "base"}]
    for e in manifest["experts"]:
        nodes.append(
            {"id": e["id"], "revision": e["revision"], "kind": e["kind"], "name": e["name"]}
        )
    nodes.append(
        {
            "id": "moe",
            "kind": "merge",
            "method": "moe",
            "parents": [e["id"] for e in manifest["experts"]],
            "parameters": {"router": manifest["router_mode"], "top_k": manifest["top_k"]},
        }
    )
    return nodes


def hub_merge_block(manifest: dict[str, Any]) -> dict[str, Any]:
    routing = manifest.get("routing", {})
    return {
        "kind": "moe",
        "architecture": manifest["architecture"],
        "router_mode": manifest["router_mode"],
        "top_k": manifest["top_k"],
        "shared_weights": manifest["settings"]["shared"],
        "base": manifest["base"]["id"],
        "experts": [e["id"] for e in manifest["experts"]],
        "prompts": {
            e["name"]: {"source": e["prompts"]["source"], "sha256": e["prompts"]["sha256"]}
            for e in manifest["experts"]
        },
        "parameters": {
            "total": manifest["parameters"]["total"],
            "active": manifest["parameters"]["active"],
        },
        "router_accuracy": {k: v["mean"] for k, v in routing.items()},
        "lineage": _lineage(manifest),
    }


def _fmt_params(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def template_path() -> Path:
    """The MoE card's Jinja template (beside the merge card's)."""
    return Path(__file__).parent.parent / "templates" / TEMPLATE_NAME


def build_moe_card(manifest: dict[str, Any], repo_id: str | None = None) -> ModelCard:
    """The README: front matter for the Hub, then what it is, how to use it, routing, recipe."""
    from ..card.licenses import license_fields

    parents = [e["repo_id"] for e in manifest["experts"] if e["repo_id"]]
    license, license_name = license_fields(str(manifest["license"]))
    data = ModelCardData(
        base_model=parents or None,
        base_model_relation="merge" if parents else None,
        library_name="transformers",
        license=license,
        license_name=license_name,
        pipeline_tag="text-generation",
        tags=["merge", "hub-merge", "moe", "mixtral", "mixture-of-experts"],
        hub_merge=hub_merge_block(manifest),
    )
    p = manifest["parameters"]
    name = repo_id or "this-moe"
    card = ModelCard.from_template(
        data,
        template_path=str(template_path()),
        title=name.split("/")[-1],
        repo_id=name,
        arxiv=ARXIV,
        base_id=manifest["base"]["id"],
        architecture=manifest.get("architecture", "MixtralForCausalLM"),
        experts=manifest["experts"],
        shared=manifest["settings"]["shared"],
        top_k=manifest["top_k"],
        total=_fmt_params(p["total"]),
        active=_fmt_params(p["active"]),
        router_mode=manifest["router_mode"],
        router_note=ROUTER_NOTES.get(manifest["router_mode"], ""),
        routing=manifest.get("routing", {}),
        routing_png=ROUTING_PNG,
        command=manifest.get("command", "hub-merge moe ..."),
    )
    return card


def write_moe_card(
    folder: Path,
    manifest: dict[str, Any],
    prompts: Sequence[PromptSet],
    tests: Sequence[PromptSet] | None,
    *,
    device: Any = "cpu",
    repo_id: str | None = None,
) -> dict[str, Any]:
    """Load the written MoE, measure its routing, write routing.png, README.md, hub_merge.json."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..card import validate_card

    model = AutoModelForCausalLM.from_pretrained(folder).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    curves = {"positive prompts": measure_routing(model, tokenizer, prompts, device=device)}
    if tests is not None:
        curves["test rows"] = measure_routing(model, tokenizer, tests, device=device)
    del model
    names = [e["name"] for e in manifest["experts"]]
    manifest = {**manifest, "routing": {k: v.to_json() for k, v in curves.items()}}
    plot_routing(curves, names, folder / ROUTING_PNG)
    card = build_moe_card(manifest, repo_id)
    validate_card(card)
    (folder / "README.md").write_text(str(card), encoding="utf-8")
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def write_moe_readme(folder: str | Path, repo_id: str | None = None) -> Any:
    """Re-render a MoE folder's card for ``repo_id``, check it, and write ``README.md``.

    The MoE's card writer for ``hub_merge.publish`` (which validates it on the Hub and pushes).

    Returns:
        `hub_merge.card.CardResult`: the README, ``hub_merge.json``, the license and images.
    """
    from ..card import CardResult, validate_card

    folder = Path(folder)
    manifest = json.loads((folder / MANIFEST).read_text())
    card = build_moe_card(manifest, repo_id)
    validate_card(card)
    readme = folder / "README.md"
    atomic_write(readme, str(card))
    return CardResult(
        readme=readme,
        hub_merge_json=folder / MANIFEST,
        node="moe",
        license=str(manifest["license"]),
        images=[ROUTING_PNG] if (folder / ROUTING_PNG).is_file() else [],
    )
