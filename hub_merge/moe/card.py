"""The MoE's model card, routing plot and ``hub_merge.json``, and publishing a MoE folder.

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
from ..errors import LicenseConflictError
from .router import PromptSet
from .routing import measure_routing, plot_routing

MANIFEST = "hub_merge.json"
ROUTING_PNG = "routing.png"
ARXIV = {
    "moe": "https://arxiv.org/abs/1701.06538",
    "mixtral": "https://arxiv.org/abs/2401.04088",
}


def license_of(models: Sequence[Any], explicit: str | None) -> str:
    """The MoE's license: the one given, else the parents' when they all name the same one."""
    if explicit:
        return explicit
    found = {getattr(m, "license", None) for m in models}
    if len(found) == 1 and None not in found:
        return str(found.pop())
    names = ", ".join(f"{getattr(m, 'repo_id', None) or m.path}: {m.license}" for m in models)
    raise LicenseConflictError(
        f"The parents' licenses differ or are unknown ({names}); choose the MoE's license with "
        "--license (e.g. --license apache-2.0) after checking the parents' terms allow it."
    )


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


def build_moe_card(manifest: dict[str, Any], repo_id: str | None = None) -> ModelCard:
    """The README: front matter for the Hub, then what it is, how to use it, routing, recipe."""
    parents = [e["repo_id"] for e in manifest["experts"] if e["repo_id"]]
    data = ModelCardData(
        base_model=parents or None,
        base_model_relation="merge" if parents else None,
        library_name="transformers",
        license=manifest["license"],
        pipeline_tag="text-generation",
        tags=["merge", "hub-merge", "moe", "mixtral", "mixture-of-experts"],
        hub_merge=hub_merge_block(manifest),
    )
    p = manifest["parameters"]
    experts = manifest["experts"]
    rows = "\n".join(
        f"| {i} | {e['name']} | `{e['id']}` | {e['kind']} | {e['prompts']['count']} "
        f"({e['prompts']['source']}, sha256 `{e['prompts']['sha256'][:12]}`) |"
        for i, e in enumerate(experts)
    )
    routing = manifest.get("routing", {})
    acc_rows = "\n".join(
        f"| {name} | {v['mean']:.3f} | " + ", ".join(f"{a:.2f}" for a in v["per_layer"]) + " |"
        for name, v in routing.items()
    )
    name = repo_id or "this-moe"
    body = f"""
# {name.split("/")[-1]}

A mixture of experts ([Shazeer et al. 2017]({ARXIV["moe"]}); `{manifest["architecture"]}`,
the Mixtral layout of [Jiang et al. 2024]({ARXIV["mixtral"]}) or its Qwen-MoE kin) assembled by
[hub-merge](https://github.com/) from `{manifest["base"]["id"]}` and {len(experts)} of its
experts. Each expert's MLP is one MoE expert; embeddings, attention and norms are
{"the base's" if manifest["settings"]["shared"] == "base" else "the base plus the mean of the experts' deltas"}.
A router in every layer sends each token to its top-{manifest["top_k"]} experts.

- Parameters: **{_fmt_params(p["total"])} total, {_fmt_params(p["active"])} active per token**
  (top-{manifest["top_k"]} of {len(experts)} experts).
- Router: `{manifest["router_mode"]}` initialisation from each expert's positive prompts
  (no router training).

## Use

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{name}")
tokenizer = AutoTokenizer.from_pretrained("{name}")
ids = tokenizer("Hello", return_tensors="pt")
print(tokenizer.decode(model.generate(**ids, max_new_tokens=20)[0]))
```

## Experts

| index | name | from | kind | positive prompts |
| ---: | --- | --- | --- | --- |
{rows}

## Routing

Share of prompt tokens whose top-1 expert is their own task's expert, per layer:

| rows | mean | per layer |
| --- | ---: | --- |
{acc_rows}

![routing]({ROUTING_PNG})

## Reproduce

```bash
{manifest.get("command", "hub-merge moe ...")}
```

Machine-readable lineage and settings: `hub_merge.json`.
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


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


def publish_moe(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    create_pr: bool = False,
    commit_message: str | None = None,
    endpoint: str | None = None,
    token: str | None = None,
) -> Any:
    """Re-render the card for ``repo_id``, have the Hub validate it, push the folder in one commit."""
    from ..card import CardResult, validate_card
    from ..hub import validate_card_on_hub
    from ..publish import PublishResult
    from ..push import push

    folder = Path(folder)
    manifest = json.loads((folder / MANIFEST).read_text())
    card = build_moe_card(manifest, repo_id)
    validate_card(card)
    text = str(card)
    validate_card_on_hub(text, endpoint=endpoint, token=token)
    readme = folder / "README.md"
    atomic_write(readme, text)
    result = push(
        folder,
        repo_id,
        private=private,
        create_pr=create_pr,
        commit_message=commit_message or f"Publish MoE of {len(manifest['experts'])} experts",
        commit_description="Assembled by hub-merge moe; lineage and routing in hub_merge.json.",
        endpoint=endpoint,
        token=token,
    )
    card_result = CardResult(
        readme=readme,
        hub_merge_json=folder / MANIFEST,
        node="moe",
        license=str(manifest["license"]),
        images=[ROUTING_PNG] if (folder / ROUTING_PNG).is_file() else [],
    )
    return PublishResult(folder=folder, card=card_result, push=result)
