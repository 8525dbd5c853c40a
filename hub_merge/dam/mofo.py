"""MoFO-AdamW: AdamW that moves only the entries with the largest momentum (DAM's default).

MoFO (Chen et al. 2024, "MoFO: Momentum-Filtered Optimizer for Mitigating Forgetting in LLM
Fine-Tuning", https://arxiv.org/abs/2407.20999) keeps Adam's moment estimates for every entry
but, at each step and within each parameter block, applies the update only to the fraction
``alpha`` of entries whose first moment |m_t| is largest; the rest stay where they are. The DAM
reference trains its coefficients with it (alpha 0.3). No maintained package provides MoFO
(torch, transformers and the usual optimizer collections do not), so it is written here from
the paper's Algorithm 1, on torch's own AdamW arithmetic:

    m_t = β1 m + (1 − β1) g;   v_t = β2 v + (1 − β2) g²
    m̂ = m_t / (1 − β1^t);     v̂ = v_t / (1 − β2^t)
    mask = top-⌈α·n⌉ entries of |m_t| in the block (n its size; at least one)
    θ ← θ − lr · wd · θ (decoupled weight decay, AdamW's);  θ ← θ − lr · mask ⊙ m̂ / (√v̂ + ε)

One block is one parameter tensor, as in the paper's per-partition filter, or with
``rows_are_blocks`` each slice along its first axis: DAM holds a layer's coefficients for all N
experts in one (N, columns) tensor, where the reference has one parameter per expert and layer,
so DAM filters per row to select as the reference does. The state uses AdamW's names (``step``, ``exp_avg``,
``exp_avg_sq``), so DAM checkpoints store and resume either optimizer the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch


class MoFOAdamW(torch.optim.Optimizer):
    """AdamW whose update touches only the top-``alpha`` fraction of entries by momentum.

    Args:
        params: the tensors to train.
        lr, betas, eps, weight_decay: as ``torch.optim.AdamW``.
        alpha: fraction of each block's entries updated per step, in (0, 1]; 1 is AdamW.
        rows_are_blocks: filter each slice along the first axis on its own (a 1-D tensor's
            entries are then blocks of one, always updated).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        alpha: float = 0.3,
        rows_are_blocks: bool = False,
    ) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"MoFO alpha must be in (0, 1]; got {alpha}.")
        if lr < 0 or eps < 0 or weight_decay < 0:
            raise ValueError("lr, eps and weight_decay must be >= 0.")
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            alpha=alpha,
            rows_are_blocks=rows_are_blocks,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps, wd, alpha = group["lr"], group["eps"], group["weight_decay"], group["alpha"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] = torch.as_tensor(state["step"], dtype=torch.float32) + 1
                t = float(state["step"])
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                if wd:
                    p.mul_(1 - lr * wd)
                denom = (v / (1 - beta2**t)).sqrt_().add_(eps)
                update = (m / (1 - beta1**t)) / denom
                blocks = m.abs().reshape(m.shape[0] if group["rows_are_blocks"] else 1, -1)
                n = blocks.shape[1]
                keep = max(1, math.ceil(alpha * n))
                if keep < n:
                    mask = torch.zeros_like(blocks, dtype=torch.bool)
                    mask.scatter_(1, blocks.topk(keep, dim=1).indices, True)
                    update = update * mask.reshape(m.shape)
                p.add_(update, alpha=-lr)
        return loss


__all__ = ["MoFOAdamW"]
