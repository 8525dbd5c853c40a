"""``hub-merge moe``: assemble a mixture of experts (Mixtral, Qwen2-MoE, Qwen3-MoE) from a base
and its experts."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import click

from ..errors import ConfigError
from ._hubopts import endpoint_option, token_option


def _prompts(value: str) -> str | list[str]:
    """A ``.jsonl`` task file, or literal prompts separated by ``;;``."""
    if value.endswith(".jsonl"):
        return value
    return [p.strip() for p in value.split(";;") if p.strip()]


@click.command("moe")
@click.option(
    "--base",
    required=True,
    help="Base model: org/name[@rev] or a folder (Llama, Mistral, Qwen2 or Qwen3).",
)
@click.option(
    "--expert",
    "experts",
    multiple=True,
    required=True,
    help="An expert (full fine-tune or LoRA adapter of the base); repeat 2-8 times.",
)
@click.option(
    "--prompts",
    "prompts",
    multiple=True,
    required=True,
    help="Positive prompts of the expert at the same position: a task .jsonl file, or prompts "
    "separated by ';;'. Repeat once per --expert.",
)
@click.option(
    "--negative-prompts",
    "negatives",
    multiple=True,
    help="mergekit-moe's negative prompts (with --router mergekit or mergekit-mean): give none, "
    "or one per --expert in order ('' for an expert without): a task .jsonl file, or prompts "
    "separated by ';;'. Their hidden-state vector is subtracted from the expert's gate.",
)
@click.option("--name", "names", multiple=True, help="Expert names (default: repo/folder names).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--router",
    type=click.Choice(["hidden", "hidden-mean", "mergekit", "mergekit-mean", "embed", "random"]),
    default="hidden",
    show_default=True,
    help="Router initialisation. hidden (ours, the default because it routes better: see "
    "benchmarks/RESULTS.md): a logistic regression on the MLP inputs of each expert's own model "
    "over its prompts and answers; hidden-mean: their normalised means; mergekit / "
    "mergekit-mean: exactly mergekit-moe's gate_mode hidden / hidden_avg (the base's residual "
    "stream over the prompts only, last token / mean, negative prompts subtracted, normalised); "
    "embed: token embeddings; random.",
)
@click.option("--top-k", type=int, default=2, show_default=True, help="Experts per token.")
@click.option(
    "--shared",
    type=click.Choice(["base", "average"]),
    default="base",
    show_default=True,
    help="Attention, norms, embeddings: the base's, or base + the mean of the experts' deltas.",
)
@click.option(
    "--test",
    "tests",
    multiple=True,
    help="Task .jsonl per expert (same order) to measure router accuracy on; optional.",
)
@click.option(
    "--output-arch",
    type=click.Choice(["auto", "mixtral", "qwen2_moe", "qwen3_moe"]),
    default="auto",
    show_default=True,
    help="The MoE written: auto picks the base's family (Llama/Mistral -> mixtral, Qwen2 -> "
    "qwen2_moe, Qwen3 -> qwen3_moe); qwen2_moe also takes Llama/Mistral bases, as mergekit-moe.",
)
@click.option(
    "--shared-expert",
    default=None,
    help="qwen2_moe only: the always-active shared expert's MLPs: `base`, or a fine-tune or "
    "adapter of the base (default: an empty shared expert, so the output is the routed mix).",
)
@click.option("--prompt-limit", type=int, default=64, show_default=True, help="Rows per file.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for --router random.")
@click.option("--license", "license_", default=None, help="License (default: the parents').")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@endpoint_option
@token_option
def command(
    base: str,
    experts: tuple[str, ...],
    prompts: tuple[str, ...],
    negatives: tuple[str, ...],
    names: tuple[str, ...],
    out: Path,
    router: str,
    top_k: int,
    shared: str,
    output_arch: str,
    shared_expert: str | None,
    tests: tuple[str, ...],
    prompt_limit: int,
    seed: int,
    license_: str | None,
    device: str,
    overwrite: bool,
    as_json: bool,
    endpoint: str | None,
    token: str | None,
) -> None:
    """Build a MoE: each expert's MLP becomes one MoE expert, the rest is shared.

    The output is a MixtralForCausalLM, a Qwen2MoeForCausalLM or a Qwen3MoeForCausalLM
    (--output-arch; by default the base's own family).

    The router of every layer is initialised from each expert's positive prompts; the output
    loads with transformers' AutoModelForCausalLM and carries a card (routing plot, parameter
    counts, prompt digests) that `hub-merge push OUT --repo me/moe` publishes.

    \b
    Examples:
      hub-merge moe --base org/base --expert org/math --prompts math.jsonl \\
          --expert org/code-lora --prompts "def fib(n):;;import numpy" --out moe
      hub-merge moe --base ./base --expert ./a --prompts a.jsonl --expert ./b \\
          --prompts b.jsonl --top-k 1 --test a_test.jsonl --test b_test.jsonl --out moe
    """
    from ..moe import ExpertSpec, MoeSettings, build_moe

    if len(prompts) != len(experts):
        raise ConfigError(
            f"Give one --prompts per --expert, in the same order: {len(experts)} experts, "
            f"{len(prompts)} --prompts."
        )
    if names and len(names) != len(experts):
        raise ConfigError(f"Give no --name or one per --expert ({len(experts)}).")
    if negatives and len(negatives) != len(experts):
        raise ConfigError(
            f"Give no --negative-prompts or one per --expert ({len(experts)}), '' for none."
        )
    specs = [
        ExpertSpec(
            e,
            _prompts(p),
            names[i] if names else None,
            (_prompts(negatives[i]) or None) if negatives and negatives[i].strip() else None,
        )
        for i, (e, p) in enumerate(zip(experts, prompts, strict=True))
    ]
    argv = [a for a in sys.argv[1:] if a] if sys.argv[1:2] == ["moe"] else None
    result = build_moe(
        base,
        specs,
        out,
        MoeSettings(
            router=router,
            top_k=top_k,
            shared=shared,
            prompt_limit=prompt_limit,
            seed=seed,
            output_arch=output_arch,
            shared_expert=shared_expert,
        ),
        test_rows=list(tests) or None,
        license=license_,
        device=device,
        overwrite=overwrite,
        progress=not as_json,
        endpoint=endpoint,
        token=token,
        command=None if argv is None or "--token" in argv else shlex.join(["hub-merge", *argv]),
    )
    m = result.manifest
    if as_json:
        click.echo(json.dumps({"out": str(result.folder), **m}, indent=2))
        return
    p = m["parameters"]
    click.echo(
        f"MoE of {len(m['experts'])} experts (top-{m['top_k']}, router {m['router_mode']}) in "
        f"{result.folder}: {p['total']:,} parameters, {p['active']:,} active per token."
    )
    for rows, r in m["routing"].items():
        layers = " ".join(f"{a:.2f}" for a in r["per_layer"])
        click.echo(f"router accuracy on {rows}: {r['mean']:.3f} (per layer: {layers})")
