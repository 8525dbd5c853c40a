"""Router initialisation: one gate vector per expert and layer, from each expert's positive prompts.

Modes (``RouterMode``):
- ``hidden`` (default): the inputs the Mixtral router will actually see (the post-attention
  RMSNorm output of every layer), collected token by token while each expert's own dense path
  (shared weights + that expert's MLPs) reads its positive prompts, then a multinomial logistic
  regression without bias per layer (the router has no bias) separates the experts' tokens.
- ``hidden-mean``: as mergekit-moe's ``hidden`` mode: each expert's gate is the normalised mean of
  those hidden states. Kept as the reference point; the means of different prompts share a large
  common component, so these gates are often nearly parallel (mergekit warns of "degenerate"
  gates) and route poorly.
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

RouterMode = Literal["hidden", "hidden-mean", "embed", "random"]
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


def check_mode(mode: str) -> None:
    if mode not in ROUTER_MODES:
        raise ConfigError(f"Unknown router mode {mode!r}; choose one of {list(ROUTER_MODES)}.")
