"""What a scorer loads, as plain data: the serial search and every Ray actor build it one way.

A :class:`WorkerSpec` names local folders (the base, each expert by its recipe string), the task
rows and the evaluation settings. ``build()`` makes the merge session, the tokenizer, the
evaluator and the :class:`~hub_merge.search.backend.EngineBackend` over them, so a Ray actor
(:mod:`hub_merge.search.distributed`) scores a recipe exactly as the driver would. It travels as
JSON (no tensors, no pickled objects).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from ..evaluate import Evaluator, Example, Task


@dataclass(frozen=True)
class WorkerSpec:
    """Everything one scorer needs, JSON-able.

    Args:
        base: the base model's local folder (config, tokenizer, weights).
        base_source: the recipe string that names the base.
        folders: recipe model string (an expert's source) -> local folder.
        tasks: (name, [(prompt, answer, choices)]) per task: the dev rows, already limited.
        metric, weights, batch_size, max_new_tokens: the evaluator's settings.
        device: ``auto`` (the actor's GPU when it has one), ``cpu``, ``cuda``...
        dtype: the session's storage dtype (``auto``, ``float32``, ``bfloat16``; None: the base's).
        keep_models, max_memory: the backend's merged-state cache bounds.
    """

    base: str
    base_source: str
    folders: dict[str, str]
    tasks: list[tuple[str, list[tuple[str, str, list[str] | None]]]]
    metric: str = "answer_loss"
    weights: dict[str, float] = field(default_factory=dict)
    batch_size: int | str = 16
    max_new_tokens: int | None = None
    device: str = "auto"
    dtype: str | None = None
    keep_models: int | None = None
    max_memory: int | None = None

    @classmethod
    def for_tasks(cls, tasks: list[Task], **kwargs: Any) -> WorkerSpec:
        rows = [
            (
                t.name,
                [(e.prompt, e.answer, list(e.choices) if e.choices else None) for e in t.examples],
            )
            for t in tasks
        ]
        return cls(tasks=rows, **kwargs)

    def task_objects(self) -> list[Task]:
        return [
            Task(name, tuple(Example(p, a, tuple(c) if c else None) for p, a, c in rows))
            for name, rows in self.tasks
        ]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> WorkerSpec:
        data = json.loads(text)
        data["tasks"] = [(name, [tuple(r) for r in rows]) for name, rows in data["tasks"]]
        return cls(**data)

    def session_dtype(self) -> Any:
        import torch

        if self.dtype in (None, "auto"):
            return self.dtype
        return getattr(torch, self.dtype)

    def build(self) -> Any:
        """The backend over freshly loaded models (the base once, experts on first use)."""
        from transformers import AutoTokenizer

        from ..merge import MergeSession
        from .backend import EngineBackend

        session = MergeSession(self.base, device=self.device, dtype=self.session_dtype())
        tokenizer = AutoTokenizer.from_pretrained(self.base)
        evaluator = Evaluator(
            self.task_objects(),
            tokenizer,
            metric=self.metric,
            batch_size=self.batch_size,
            device=session.device,
            weights=self.weights or None,
            max_new_tokens=self.max_new_tokens,
        )
        return EngineBackend(
            session,
            evaluator,
            self.folders,
            base_source=self.base_source,
            keep_models=self.keep_models,
            max_memory=self.max_memory,
        )
