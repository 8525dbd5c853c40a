"""Each expert's own prompts for DAM: which task belongs to which expert, tokenised and batched.

DAM distils expert k into the merge on expert k's data only (that is what makes the loss a sum of
per-expert KLs), so every expert must own a non-empty task. Rows are tokenised the way the
evaluator scores them (prompt with special tokens, answer without, then EOS).
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError, TaskFileError
from ..evaluate import Example


def assign_tasks(
    experts: Sequence[str],
    tasks: Mapping[str, Sequence[Example]],
    assignment: Mapping[str, str] | None = None,
) -> dict[str, list[Example]]:
    """The prompts of each expert: ``assignment[expert]`` names its task, else it is matched.

    An expert matches the task of its own name, or the one task whose name is a word of the
    expert's name (``tiny-llama-lora-reverse`` owns ``reverse``).

    Raises:
        ConfigError: an expert matches no task or several, or the assignment names an unknown one.
        TaskFileError: an expert's task has no prompts.
    """
    assignment = dict(assignment or {})
    unknown = sorted(set(assignment) - set(experts))
    if unknown:
        raise ConfigError(
            f"DAM task assignment names unknown experts {unknown}; experts: {list(experts)}."
        )
    out: dict[str, list[Example]] = {}
    for expert in experts:
        task = assignment.get(expert)
        if task is None:
            words = set(re.split(r"[^0-9A-Za-z]+", expert.lower()))
            found = [t for t in tasks if t == expert] or [t for t in tasks if t.lower() in words]
            if len(found) != 1:
                why = "no task" if not found else f"several tasks ({', '.join(found)})"
                raise ConfigError(
                    f"DAM: expert {expert!r} matches {why} among {sorted(tasks)}; say which task "
                    "holds its prompts (assignment expert=task, CLI --dam-task EXPERT=TASK)."
                )
            task = found[0]
        if task not in tasks:
            raise ConfigError(f"DAM: expert {expert!r} is assigned unknown task {task!r}.")
        rows = list(tasks[task])
        if not rows:
            raise TaskFileError(
                f"DAM: task {task!r} has no prompts for expert {expert!r}; DAM distils each "
                "expert on its own prompts, so give that task at least one row."
            )
        out[expert] = rows
    return out


@dataclass(frozen=True)
class Row:
    """One tokenised example; logits at ``start - 1`` onward predict the answer."""

    ids: tuple[int, ...]
    start: int


def encode(tokenizer: Any, examples: Sequence[Example], max_length: int) -> list[Row]:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ConfigError("DAM: the base tokenizer has no EOS token.")
    rows: list[Row] = []
    for ex in examples:
        prompt = list(tokenizer(ex.prompt, add_special_tokens=True)["input_ids"])
        answer = list(tokenizer(ex.answer, add_special_tokens=False)["input_ids"]) + [eos]
        ids = (prompt + answer)[:max_length]
        rows.append(Row(tuple(ids), min(len(prompt), len(ids) - 1)))
    return rows


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T), right padded
    attention_mask: torch.Tensor  # (B, T)
    loss_mask: torch.Tensor  # (B, T) bool: logits that count in the KL


def collate(rows: Sequence[Row], pad_id: int, positions: str, device: torch.device) -> Batch:
    """Right-padded batch; the loss counts every logit that predicts a real token.

    ``positions='answer'`` counts only those predicting answer tokens (and EOS).
    """
    width = max(len(r.ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    loss = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):
        n = len(r.ids)
        ids[i, :n] = torch.tensor(r.ids)
        mask[i, :n] = 1
        first = r.start - 1 if positions == "answer" else 0
        loss[i, max(first, 0) : n - 1] = True
    return Batch(ids.to(device), mask.to(device), loss.to(device))


def draw(
    n_rows: int, batch_size: int, *, seed: int, expert: int, step: int, micro: int
) -> list[int]:
    """Row indices of one micro-batch: a function of (seed, expert, step, micro) only.

    So a resumed training draws exactly the batches the interrupted one would have.
    """
    rng = random.Random(f"dam:{seed}:{expert}:{step}:{micro}")
    if batch_size >= n_rows:
        return list(range(n_rows))
    return sorted(rng.sample(range(n_rows), batch_size))


def rows_drawn(
    n_rows: int, batch_size: int, *, seed: int, expert: int, steps: int, grad_accum: int = 1
) -> int:
    """How many distinct rows of an expert's ``n_rows`` a training of ``steps`` steps reads.

    A leaderboard reports this, not the rows available: 30 steps of 8 rows read at most 240 of
    2,000 training rows.
    """
    seen: set[int] = set()
    for step in range(steps):
        for micro in range(grad_accum):
            seen.update(draw(n_rows, batch_size, seed=seed, expert=expert, step=step, micro=micro))
    return len(seen)
