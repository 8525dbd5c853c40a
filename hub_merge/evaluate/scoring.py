"""The :class:`Evaluator`: batched scoring of an in-memory causal LM on a fixed task set.

Rows are length-sorted into batches and only the logits that predict answer tokens are projected
onto the vocabulary, so a search can score hundreds of candidates without writing any to disk.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from ..errors import ConfigError, TaskFileError
from .fitness import LOWER_IS_BETTER, METRICS, fitness_from_scores
from .tasks import Task


def _pad(
    seqs: Sequence[Sequence[int]], pad_id: int, side: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad to a batch; returns (input_ids, attention_mask)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if side == "left":
            ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s) :] = 1
        else:
            ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, : len(s)] = 1
    return ids, mask


def _positions(mask: torch.Tensor) -> torch.Tensor:
    # Position ids from the mask, so left padding does not shift real tokens' positions.
    return (mask.cumsum(-1) - 1).clamp(min=0)


# model class -> whether its forward takes a boolean ``logits_to_keep`` mask (transformers >= 5)
KEEPS_LOGITS: dict[type, bool] = {}


def kept_logits(
    forward: Callable[..., Any], cls: type, keep: torch.Tensor, **kwargs: Any
) -> torch.Tensor:
    """Logits at the ``keep`` positions of a (batch, length) boolean mask, flattened row by row:
    (number kept, vocab).

    Only those positions are projected onto the vocabulary when the forward of ``cls`` takes a
    boolean ``logits_to_keep`` (transformers >= 5; remembered per class in ``KEEPS_LOGITS``):
    on a 49k-word vocabulary the projection of padding and prompt positions, and the
    logits-sized gradient of selecting from them, are a tenth of a training step. Otherwise
    (an older or custom model) every position is projected and the kept ones selected.
    """
    if KEEPS_LOGITS.get(cls, True):
        try:
            logits = forward(**{**kwargs, "use_cache": False, "logits_to_keep": keep}).logits
            if logits.dim() == 2 and logits.shape[0] == int(keep.sum()):
                KEEPS_LOGITS[cls] = True
                return logits
        except (TypeError, ValueError, IndexError, RuntimeError):
            pass
        KEEPS_LOGITS[cls] = False
    return forward(**kwargs).logits[keep]


class Evaluator:
    """Scores in-memory causal LMs on a fixed task set with one tokenizer.

    Args:
        tasks (`list[Task]`): the task set; each task is scored separately.
        tokenizer: the base model's tokenizer (candidates share the base's vocabulary).
        metric (`Metric`, *optional*): ``answer_loss`` (default), ``exact_match`` or ``choice``.
        batch_size (`int | "auto"`, *optional*): sequences per forward pass; ``"auto"`` picks
            it from free device memory (CUDA) and uses 16 on CPU.
        device (`str`, *optional*): where inputs go; the model must already be there.
        limit (`int`, *optional*): score only the first N examples of each task.
        weights (`dict`, *optional*): task name -> weight in the fitness mean.
        padding_side (`str`, *optional*): ``right`` or ``left``; scores do not depend on it.
        max_new_tokens (`int`, *optional*): generation budget for ``exact_match`` (default: the
            longest answer's token count + 2).

    >>> ev = Evaluator(load_tasks(["reverse.jsonl"]), tokenizer, limit=32)  # doctest: +SKIP
    >>> scores = ev.score(model); ev.fitness(scores)                        # doctest: +SKIP
    """

    def __init__(
        self,
        tasks: Sequence[Task],
        tokenizer: Any,
        *,
        metric: str = "answer_loss",
        batch_size: int | str = 16,
        device: str | torch.device = "cpu",
        limit: int | None = None,
        weights: Mapping[str, float] | None = None,
        padding_side: str = "right",
        max_new_tokens: int | None = None,
    ) -> None:
        if metric not in METRICS or metric == "lm_eval":
            raise ConfigError(
                f"Unknown metric {metric!r} for JSONL tasks; choose one of "
                f"{[m for m in METRICS if m != 'lm_eval']} (lm_eval is for lm-eval: tasks)."
            )
        if padding_side not in ("left", "right"):
            raise ConfigError(f"padding_side must be 'left' or 'right'; got {padding_side!r}.")
        if batch_size != "auto" and (
            isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
        ):
            raise ConfigError(f"batch_size must be at least 1 or 'auto'; got {batch_size!r}.")
        self.tasks = [t.head(limit) for t in tasks]
        if metric == "choice":
            for t in self.tasks:
                if any(ex.choices is None for ex in t.examples):
                    raise TaskFileError(
                        f"Task {t.name!r} has examples without 'choices'; metric 'choice' needs them."
                    )
        unknown = sorted(set(weights or {}) - {t.name for t in self.tasks})
        if unknown:
            raise ConfigError(
                f"Weights name unknown tasks {unknown}; tasks are {[t.name for t in self.tasks]}."
            )
        self.tokenizer = tokenizer
        self.metric = metric
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.weights = dict(weights or {})
        self.padding_side = padding_side
        self.max_new_tokens = max_new_tokens
        self.eos_id = tokenizer.eos_token_id
        if self.eos_id is None:
            raise ConfigError("The tokenizer has no EOS token; answer scoring needs one.")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        self.evaluations = 0

    @property
    def key(self) -> str:
        """A fingerprint of what is scored and how; part of every cache key."""
        spec = [
            self.metric,
            self.weights,
            [(t.name, t.digest) for t in self.tasks],
            self.max_new_tokens,
        ]
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]

    def fitness(self, scores: Mapping[str, float]) -> float:
        return fitness_from_scores(scores, self.metric, self.weights)

    # -- tokenisation ----------------------------------------------------------------------------

    def _encode(self, text: str, special: bool) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=special)["input_ids"])

    def _split(self, prompt: str, answer: str) -> tuple[list[int], list[int]]:
        """Prompt and answer ids, encoded separately and concatenated.

        This is how supervised fine-tunes (and the zoo's experts) are trained: prompt ids then
        answer ids, so an expert is scored on exactly the token sequence it learned.
        """
        return self._encode(prompt, True), self._encode(answer, False)

    # -- metrics ---------------------------------------------------------------------------------

    @torch.inference_mode()
    def _continuation_logprobs(
        self, model: Any, pairs: Sequence[tuple[list[int], list[int]]]
    ) -> list[torch.Tensor]:
        """Per-token log-probabilities of each continuation given its context.

        Rows are scored in order of length, so each batch holds rows of about one length and
        padding (wasted forward work) stays small; results come back in the caller's order.
        Only the logits that predict a continuation token are projected onto the vocabulary
        (``logits_to_keep``) when the model supports it: the rest of the sequence never pays
        for the (large) output layer or the log-softmax.
        """
        out: list[torch.Tensor | None] = [None] * len(pairs)
        order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
        size = self._rows_per_batch(model, max((len(c) + len(a) for c, a in pairs), default=1))
        for start in range(0, len(order), size):
            rows = order[start : start + size]
            chunk = [pairs[i] for i in rows]
            ids, mask = _pad([c + a for c, a in chunk], self.pad_id, self.padding_side)
            width = ids.shape[1]
            keep = torch.zeros_like(ids, dtype=torch.bool)
            targets = []
            for j, (c, a) in enumerate(chunk):
                offset = width - len(c) - len(a) if self.padding_side == "left" else 0
                # token at position p is predicted by the logits at p - 1
                first = offset + len(c)
                keep[j, first - 1 : first - 1 + len(a)] = True
                targets.append(ids[j, first : first + len(a)])
            ids, mask = ids.to(self.device), mask.to(self.device)
            target = torch.cat(targets).to(self.device)
            logits = self._kept_logits(model, ids, mask, keep.to(self.device))  # (N, V)
            logp = torch.log_softmax(logits.float(), dim=-1)
            picked = logp.gather(-1, target[:, None])[:, 0].cpu()
            lengths = [len(a) for _, a in chunk]
            for i, lp in zip(rows, torch.split(picked, lengths), strict=True):
                out[i] = lp
        return out  # type: ignore[return-value]

    def _kept_logits(
        self, model: Any, ids: torch.Tensor, mask: torch.Tensor, keep: torch.Tensor
    ) -> torch.Tensor:
        """Logits at the ``keep`` positions, flattened row by row: (number kept, vocab)."""
        return kept_logits(
            model,
            type(model),
            keep,
            input_ids=ids,
            attention_mask=mask,
            position_ids=_positions(mask),
        )

    def _rows_per_batch(self, model: Any, longest: int) -> int:
        """The configured batch size, or with ``batch_size="auto"`` one chosen from free memory.

        On CUDA: a quarter of the free memory over a rough per-row peak (the kept logits in
        float32 twice, for the log-softmax, plus a layer's activations); on CPU, 16 rows (larger
        batches buy nothing on a few cores and cost memory).
        """
        if self.batch_size != "auto":
            return int(self.batch_size)
        if self.device.type != "cuda":
            return 16
        config = getattr(model, "config", None)
        vocab = int(getattr(config, "vocab_size", 50_000) or 50_000)
        hidden = int(getattr(config, "hidden_size", 4096) or 4096)
        inner = int(getattr(config, "intermediate_size", 4 * hidden) or 4 * hidden)
        elt = next(model.parameters()).element_size() if hasattr(model, "parameters") else 2
        per_row = longest * (2 * 4 * vocab + elt * (8 * hidden + 3 * inner))
        free, _ = torch.cuda.mem_get_info(self.device)
        return max(1, min(256, int(0.25 * free // max(per_row, 1))))

    def _answer_loss(self, model: Any, task: Task) -> float:
        pairs = []
        for ex in task.examples:
            ctx, ans = self._split(ex.prompt, ex.answer)
            pairs.append((ctx, ans + [self.eos_id]))
        lps = self._continuation_logprobs(model, pairs)
        return float(sum(-lp.mean().item() for lp in lps) / len(lps))

    def _choice(self, model: Any, task: Task) -> float:
        pairs, owners = [], []
        for i, ex in enumerate(task.examples):
            for choice in ex.choices or ():
                pairs.append(self._split(ex.prompt, choice))
                owners.append(i)
        lps = self._continuation_logprobs(model, pairs)
        best: dict[int, tuple[float, int]] = {}
        seen: dict[int, int] = {}
        for i, lp in zip(owners, lps, strict=True):
            j = seen.get(i, 0)
            seen[i] = j + 1
            total = lp.sum().item()
            if i not in best or total > best[i][0]:
                best[i] = (total, j)
        correct = sum(
            1
            for i, ex in enumerate(task.examples)
            if ex.choices and ex.choices[best[i][1]] == ex.answer
        )
        return correct / len(task.examples)

    @torch.inference_mode()
    def _exact_match(self, model: Any, task: Task) -> float:
        budget = self.max_new_tokens or 2 + max(
            len(self._encode(ex.answer, False)) for ex in task.examples
        )
        prompts = [self._encode(ex.prompt, True) for ex in task.examples]
        # by prompt length: batches of similar prompts need little left padding
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        size = self._rows_per_batch(model, max(map(len, prompts)) + budget)
        correct = 0
        for start in range(0, len(order), size):
            rows = order[start : start + size]
            # generation always pads on the left so every row continues from its last real token
            ids, mask = _pad([prompts[i] for i in rows], self.pad_id, "left")
            gen = model.generate(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                max_new_tokens=budget,
                do_sample=False,
                pad_token_id=self.pad_id,
                eos_token_id=self.eos_id,
            )
            new = gen[:, ids.shape[1] :]
            for i, row in zip(rows, new.tolist(), strict=True):
                if self.eos_id in row:
                    row = row[: row.index(self.eos_id)]
                text = self.tokenizer.decode(row, skip_special_tokens=True)
                correct += int(text.strip() == task.examples[i].answer.strip())
        return correct / len(task.examples)

    def score(self, model: Any) -> dict[str, float]:
        """Raw per-task scores of an in-memory model (loss: lower is better; others: accuracy)."""
        fn = {
            "answer_loss": self._answer_loss,
            "exact_match": self._exact_match,
            "choice": self._choice,
        }[self.metric]
        was_training = getattr(model, "training", False)
        if hasattr(model, "eval"):
            model.eval()
        try:
            with torch.inference_mode():  # no autograd state anywhere in scoring
                scores = {t.name: fn(model, t) for t in self.tasks}
        finally:
            if was_training:
                model.train()
        self.evaluations += 1
        for name, value in scores.items():
            if math.isnan(value):
                scores[name] = math.inf if self.metric in LOWER_IS_BETTER else 0.0
        return scores
