"""Where a MoE routes tokens: per layer, the share of each prompt set's tokens sent to each expert.

Router accuracy (issue 16): on rows of a task whose expert is known, the fraction of prompt
tokens whose top-1 expert is that task's own expert, per layer. Measured on the real Mixtral
model's router logits (``output_router_logits``), so earlier layers' routing choices shape the
hidden states later routers see, exactly as at inference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .router import PromptSet, batches, encode


@dataclass(frozen=True)
class Routing:
    """``fractions[s, l, e]``: share of set s's prompt tokens whose top-1 at layer l is expert e."""

    fractions: np.ndarray
    tokens: list[int]  # prompt tokens per set

    def accuracy(self) -> np.ndarray:
        """Per layer, token-weighted fraction routed to the set's own expert (set s -> expert s)."""
        n = self.fractions.shape[0]
        own = np.stack([self.fractions[s, :, s] for s in range(n)])  # (sets, layers)
        w = np.asarray(self.tokens, dtype=float)[:, None]
        return (own * w).sum(0) / w.sum()

    def to_json(self) -> dict[str, Any]:
        acc = self.accuracy()
        return {
            "per_layer": [round(float(a), 4) for a in acc],
            "mean": round(float(acc.mean()), 4),
            "per_expert": [
                round(float(self.fractions[s, :, s].mean()), 4)
                for s in range(self.fractions.shape[0])
            ],
            "tokens": list(self.tokens),
        }


@torch.inference_mode()
def measure_routing(
    model: Any,
    tokenizer: Any,
    sets: Sequence[PromptSet],
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 16,
) -> Routing:
    """Top-1 routing of each set's prompt tokens (answers are not part of the measurement)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    n_layers = model.config.num_hidden_layers
    # Mixtral names it num_local_experts, Qwen2/Qwen3-MoE num_experts
    n_exp = getattr(model.config, "num_local_experts", None) or model.config.num_experts
    fractions = np.zeros((len(sets), n_layers, n_exp))
    tokens: list[int] = []
    for s, prompts in enumerate(sets):
        seqs = [encode(tokenizer, p)[0] for p, _ in prompts.texts]
        counts = torch.zeros(n_layers, n_exp)
        total = 0
        for ids, mask in batches(seqs, pad, batch_size):
            out = model(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                output_router_logits=True,
            )
            keep = mask.reshape(-1).bool()
            total += int(keep.sum())
            for layer, logits in enumerate(out.router_logits):
                top = logits.float().cpu().reshape(-1, n_exp)[keep].argmax(-1)
                counts[layer] += torch.bincount(top, minlength=n_exp).float()
        fractions[s] = (counts / max(total, 1)).numpy()
        tokens.append(total)
    return Routing(fractions, tokens)


def plot_routing(
    curves: dict[str, Routing], names: Sequence[str], path: str | Path, *, dpi: int = 110
) -> Path:
    """Router accuracy per layer: one line per expert (own-expert share), one panel per row set."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from ..plots import save_figure, short_name

    path = Path(path)
    fig, axes = plt.subplots(1, len(curves), figsize=(5.2 * len(curves), 3.6), squeeze=False)
    try:
        for ax, (title, routing) in zip(axes[0], curves.items(), strict=True):
            layers = np.arange(routing.fractions.shape[1])
            for s, name in enumerate(names):
                ax.plot(layers, routing.fractions[s, :, s], marker=".", label=short_name(name))
            ax.plot(layers, routing.accuracy(), color="black", lw=2, label="all tokens")
            ax.axhline(1.0 / max(len(names), 1), color="grey", ls=":", lw=1, label="chance")
            ax.set_ylim(-0.02, 1.02)
            ax.set_xlabel("layer")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel("tokens routed to own expert (top-1)")
            ax.set_title(title)
            ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        save_figure(fig, path, dpi)
    finally:
        plt.close(fig)
    return path
