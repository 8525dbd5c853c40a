"""Router initialisation: one gate vector per expert and layer, from each expert's positive prompts.

Modes (``RouterMode``):
- ``hidden`` (default): the inputs the Mixtral router will actually see (the post-attention
  RMSNorm output of every layer), collected token by token while each expert's own dense path
  (shared weights + that expert's MLPs) reads its positive prompts, then a multinomial logistic
  regression without bias per layer (the router has no bias) separates the experts' tokens.
- ``hidden-mean``: each expert's gate is the normalised mean of those hidden states (ours: the
  MLP inputs of each expert's own dense path, over prompt and answer tokens). The means of
  different prompts share a large common component, so these gates are often nearly parallel
  and route poorly.
- ``mergekit`` / ``mergekit-mean``: mergekit-moe's own gate (``gate_mode: hidden`` /
  ``hidden_avg``), computed by mergekit's code (``mergekit.moe.router``): the *base* model (in
  bfloat16, as mergekit loads it) reads each expert's prompts only (no answers; BOS prepended,
  left-padded with BOS, one batch), its residual stream ``hidden_states[:-1]`` (the input of
  each layer) is taken at the last position (``mergekit``) or averaged over the padded sequence
  (``mergekit-mean``) and over the prompts; the negative prompts' vector is subtracted and the
  result normalised per layer.
- ``embed``: no forward pass: the normalised, centred mean token embedding of each expert's
  prompts, the same for every layer (mergekit's ``cheap_embed``, centred).
- ``random``: seeded normal gates, std 1/sqrt(hidden).

Why logistic regression over the means: the router picks argmax ``W h``; fitting W to the tokens
themselves is what maximises the fraction of tokens routed to their own expert, which is what a
MoE of task experts needs (measured in benchmarks/moe_quality.py). It is a convex fit on a few
thousand vectors per layer: milliseconds with torch's L-BFGS, so no extra dependency.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import torch

from ..errors import ConfigError, TaskFileError

RouterMode = Literal["hidden", "hidden-mean", "mergekit", "mergekit-mean", "embed", "random"]
MERGEKIT_MODES = ("mergekit", "mergekit-mean")
# One line per mode for the card. ``hidden`` stays the default because it routes better: on the
# tiny zoo's 4 full experts, test-row router accuracy 0.95 against 0.29 (mergekit) and 0.51
# (mergekit-mean), chance 0.25 (benchmarks/RESULTS.md, issue 23).
ROUTER_NOTES: dict[str, str] = {
    "hidden": "hub-merge's default: a bias-free logistic regression per layer on the MLP inputs "
    "of each expert's own model over its prompts and answers (on the tiny zoo it routed 95% of "
    "test tokens to their own expert, mergekit-moe's gate 29%)",
    "hidden-mean": "the normalised mean of each expert's MLP inputs over its prompts and answers",
    "mergekit": "mergekit-moe's `hidden` gate: the base's residual stream at the prompts' last "
    "token, negative prompts subtracted, normalised",
    "mergekit-mean": "mergekit-moe's `hidden_avg` gate: the base's residual stream averaged over "
    "the prompts, negative prompts subtracted, normalised",
    "embed": "the centred, normalised mean token embedding of each expert's prompts",
    "random": "seeded random gates",
}
ROUTER_MODES: tuple[str, ...] = get_args(RouterMode)


@dataclass(frozen=True)
class PromptSet:
    """An expert's positive prompts: ``(prompt, continuation)`` pairs and where they came from.

    Rows of a task JSONL file keep their answer as the continuation, so the router also sees the
    answer tokens the expert will produce; given strings have an empty continuation.
    """

    texts: tuple[tuple[str, str], ...]
    source: str  # the file path, or "strings"
    digest: str  # sha256 of the file's bytes, or of the strings

    @classmethod
    def from_value(cls, value: str | Path | Sequence[str], *, limit: int | None = 64) -> PromptSet:
        """A JSONL task file path, or one or more literal prompt strings."""
        if isinstance(value, (str, Path)) and str(value).endswith(".jsonl"):
            from ..evaluate import load_task

            path = Path(value)
            task = load_task(path, limit=limit)
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            return cls(tuple((ex.prompt, ex.answer) for ex in task.examples), str(path), digest)
        if isinstance(value, Path) or (isinstance(value, str) and Path(value).is_file()):
            raise TaskFileError(
                f"Prompt file {value} is not a .jsonl task file: give a JSONL file of "
                "prompt/answer lines, or the prompts themselves as strings."
            )
        strings = [value] if isinstance(value, str) else list(value)
        strings = [str(s) for s in strings if str(s).strip()]
        if not strings:
            raise TaskFileError(
                "An expert's positive prompts are empty: give a task JSONL file or a prompt."
            )
        digest = hashlib.sha256(json.dumps(strings, ensure_ascii=False).encode()).hexdigest()
        return cls(tuple((s, "") for s in strings), "strings", digest)


def encode(tokenizer: Any, prompt: str, continuation: str = "") -> tuple[list[int], int]:
    """Token ids of prompt (with special tokens) then continuation, and the prompt's length.

    The same split as ``hub_merge.evaluate`` and the zoo's training, so the router sees exactly
    the sequences the experts were trained and are scored on.
    """
    ids = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    n = len(ids)
    if continuation:
        ids += list(tokenizer(continuation, add_special_tokens=False)["input_ids"])
    return ids, n


def batches(
    seqs: Sequence[list[int]], pad_id: int, size: int = 16
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Right-padded ``(input_ids, attention_mask)`` batches."""
    out = []
    for start in range(0, len(seqs), size):
        chunk = seqs[start : start + size]
        width = max(len(s) for s in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, s in enumerate(chunk):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        out.append((ids, mask))
    return out


@torch.inference_mode()
def router_inputs(
    model: Any, seqs: Sequence[list[int]], pad_id: int, device: torch.device
) -> list[torch.Tensor]:
    """Per layer, the (tokens, hidden) inputs of each decoder layer's MLP on real tokens."""
    layers = model.model.layers
    captured: list[list[torch.Tensor]] = [[] for _ in layers]
    current: dict[str, torch.Tensor] = {}

    def hook(i: int):
        def grab(_module, args):
            captured[i].append(args[0][current["mask"]].float().cpu())

        return grab

    handles = [layer.mlp.register_forward_pre_hook(hook(i)) for i, layer in enumerate(layers)]
    try:
        for ids, mask in batches(seqs, pad_id):
            current["mask"] = mask.bool().to(device)
            model(input_ids=ids.to(device), attention_mask=mask.to(device))
    finally:
        for h in handles:
            h.remove()
    return [torch.cat(c) for c in captured]


def _fit_logistic(x: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float) -> torch.Tensor:
    """Bias-free multinomial logistic regression (E, H) on features ``x`` with labels ``y``."""
    scale = x.pow(2).mean().sqrt().clamp(min=1e-8)
    xs = (x / scale).double()
    w = torch.zeros(n_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xs @ w.T, y) + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return (w.detach() / scale).float()


def gates_from_features(
    features: Sequence[Sequence[torch.Tensor]], mode: str, *, l2: float = 1e-3
) -> torch.Tensor:
    """Gates (layers, experts, hidden) from ``features[expert][layer]`` (tokens, hidden)."""
    n_exp, n_layers = len(features), len(features[0])
    gates = []
    for layer in range(n_layers):
        per = [features[e][layer] for e in range(n_exp)]
        if mode == "hidden-mean":
            means = torch.stack([f.mean(0) for f in per])
            gates.append(means / means.norm(dim=-1, keepdim=True).clamp(min=1e-8))
        elif n_exp == 1:
            gates.append(torch.zeros(1, per[0].shape[1]))  # one expert: routing is moot
        else:
            x = torch.cat(per)
            y = torch.cat([torch.full((len(f),), e, dtype=torch.long) for e, f in enumerate(per)])
            gates.append(_fit_logistic(x, y, n_exp, l2))
    return torch.stack(gates)


def embed_gates(
    embed: torch.Tensor, token_ids: Sequence[Sequence[list[int]]], n_layers: int
) -> torch.Tensor:
    """``embed`` mode: centred, normalised mean embedding of each expert's tokens, every layer."""
    means = torch.stack(
        [embed[torch.tensor([t for s in seqs for t in s])].float().mean(0) for seqs in token_ids]
    )
    if len(means) > 1:
        means = means - means.mean(0, keepdim=True)
    means = means / means.norm(dim=-1, keepdim=True).clamp(min=1e-8)
    return means[None].repeat(n_layers, 1, 1)


def random_gates(n_layers: int, n_exp: int, hidden: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n_layers, n_exp, hidden, generator=gen) / hidden**0.5


def mergekit_gates(
    base: str | Path,
    positive: Sequence[Sequence[str]],
    negative: Sequence[Sequence[str] | None],
    *,
    average: bool,
    device: torch.device,
) -> torch.Tensor:
    """mergekit-moe's ``hidden`` (or ``hidden_avg``) gates, (layers, experts, hidden), float32.

    The tokenizer is set up as ``mergekit-moe`` sets it (left padding, BOS as the pad token,
    EOS when there is no BOS) and the base is loaded in bfloat16 as mergekit loads it; the
    hidden states come from mergekit's own ``get_hidden_states`` and ``tokenize_prompts``, so
    the gates are mergekit's by construction (tests/test_moe.py compares them with the router
    weights ``mergekit-moe`` writes).
    """
    from mergekit.moe.router import get_hidden_states, tokenize_prompts
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    tok.padding_side = "left"
    tok.pad_token_id = tok.bos_token_id
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(
        base, dtype=torch.bfloat16, trust_remote_code=False
    )
    model.to(device).eval()
    gates = []
    for pos, neg in zip(positive, negative, strict=True):
        h = get_hidden_states(model, tokenize_prompts(list(pos), tok), average=average)
        if neg:
            h -= get_hidden_states(model, tokenize_prompts(list(neg), tok), average=average)
        h /= h.norm(p=2, dim=-1, keepdim=True).clamp(min=1e-8)
        gates.append(h)
    return torch.stack(gates, dim=0).permute(1, 0, 2).float().cpu()


def check_mode(mode: str) -> None:
    if mode not in ROUTER_MODES:
        raise ConfigError(f"Unknown router mode {mode!r}; choose one of {list(ROUTER_MODES)}.")
