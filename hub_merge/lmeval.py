"""Fitness from lm-evaluation-harness tasks, scored on the in-memory candidate.

``--tasks lm-eval:NAME[,NAME]`` names lm-eval tasks (its registry, or task YAMLs in
``--lm-eval-include DIR``) instead of JSONL files. Candidates are scored with lm-eval's Python
API (``simple_evaluate`` over an ``HFLM`` that wraps the model already in memory): nothing is
written to disk. The dev/test rules are those of JSONL tasks (``hub_merge.splits``): each
document goes to dev or test by a hash of its content (``--test-fraction``), or ``--test-tasks
lm-eval:NAME`` names separate test tasks; the public-benchmark guard applies to the names. The
fitness is each task's primary metric (its first), which must be higher-is-better (accuracy,
exact match...). lm-eval is the optional extra ``hub-merge[eval]``, imported only when used.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError, TaskFileError

PREFIX = "lm-eval:"
METRIC = "lm_eval"  # the search's metric name for "each lm-eval task's primary metric"


def is_lm_eval(specs: Sequence[str]) -> bool:
    """Whether task specs name lm-eval tasks (all of them must, or none)."""
    flags = [str(s).startswith(PREFIX) for s in specs]
    if any(flags) and not all(flags):
        raise ConfigError("Give either JSONL task files or `lm-eval:NAME[,NAME]` specs, not both.")
    return bool(flags) and all(flags)


def parse_specs(specs: Sequence[str]) -> list[str]:
    """Task names from ``lm-eval:a,b`` specs (several specs may be given)."""
    names: list[str] = []
    for spec in specs:
        for name in str(spec)[len(PREFIX) :].split(","):
            name = name.strip()
            if not name:
                raise ConfigError(f"Empty lm-eval task name in {spec!r}: use lm-eval:NAME[,NAME].")
            if name in names:
                raise ConfigError(f"lm-eval task {name!r} is named twice.")
            names.append(name)
    if not names:
        raise ConfigError("No lm-eval task named: use lm-eval:NAME[,NAME].")
    return names


@dataclass(frozen=True)
class LmEvalSpecs:
    """Checked lm-eval task names: the dev tasks and, when given, one test task for each."""

    names: list[str]
    test_names: list[str]


def check_specs(
    specs: Sequence[str],
    *,
    test_specs: Sequence[str] = (),
    test_fraction: float = 0.3,
    limit: int | None = None,
    allow_benchmark_fitness: bool = False,
) -> LmEvalSpecs:
    """Every check of ``--tasks lm-eval:...`` that needs no lm-eval: the one place they live.

    The search calls it before any weight is pulled, so a bad spec costs no download; lm-eval
    itself (the registry, the documents) is only read afterwards, by :func:`build_evaluators`.
    """
    from .splits import check_benchmark_fitness, check_split_settings

    check_split_settings(test_fraction, test_specs, limit)
    names = parse_specs(specs)
    check_benchmark_fitness(names, allow=allow_benchmark_fitness)
    test_names = parse_specs(test_specs) if test_specs else []
    if test_specs and len(test_names) != len(names):
        raise ConfigError(
            f"Give one test task per task: {len(names)} task(s), {len(test_names)} test task(s)."
        )
    if set(test_names) & set(names):
        raise ConfigError(
            f"{sorted(set(test_names) & set(names))} is both a dev and a test task; a test task "
            "must hold documents the search never reads."
        )
    return LmEvalSpecs(names, test_names)


def doc_key(doc: Mapping[str, Any]) -> str:
    """What the split hashes for one document: its content, independent of its position."""
    return json.dumps(dict(doc), sort_keys=True, default=str)


@dataclass(frozen=True)
class LmEvalTask:
    """One task's documents for one side of the split, and its primary metric."""

    name: str  # the name the run reports (the dev task's name, also for its test task)
    lm_eval_name: str  # the lm-eval task scored
    metric: str
    indices: tuple[int, ...]
    digest: str


class LmEvalEvaluator:
    """Scores an in-memory model on lm-eval tasks; the search's ``Evaluator`` for them.

    Same surface as :class:`hub_merge.evaluate.Evaluator` where the search uses it: ``score``
    (per-task scores), ``key`` (cache key of the evaluation settings) and ``tasks``.
    """

    def __init__(
        self,
        tasks: Sequence[LmEvalTask],
        manager: Any,
        tokenizer: Any,
        *,
        batch_size: int = 16,
        device: Any = "cpu",
    ) -> None:
        self.tasks = list(tasks)
        self.manager = manager
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.device = str(device)
        self.evaluations = 0

    @property
    def key(self) -> str:
        """A fingerprint of what is scored (as ``Evaluator.key``); part of every cache key."""
        spec = [(t.lm_eval_name, t.metric, t.digest, list(t.indices)) for t in self.tasks]
        return hashlib.sha256(json.dumps(spec).encode()).hexdigest()[:16]

    def score(self, model: Any) -> dict[str, float]:
        """Per-task primary metric of ``model`` on this side's documents, in memory."""
        import lm_eval
        from lm_eval.models.huggingface import HFLM

        lm = HFLM(
            pretrained=model,
            tokenizer=self.tokenizer,
            batch_size=self.batch_size,
            device=self.device,
        )
        out = lm_eval.simple_evaluate(
            model=lm,
            tasks=[t.lm_eval_name for t in self.tasks],
            task_manager=self.manager,
            samples={t.lm_eval_name: list(t.indices) for t in self.tasks},
            log_samples=False,
            bootstrap_iters=0,
            verbosity="ERROR",
        )
        self.evaluations += 1
        results = out["results"]
        return {t.name: float(results[t.lm_eval_name][f"{t.metric},none"]) for t in self.tasks}


def _manager(include_path: str | None) -> Any:
    try:
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise ConfigError(
            "lm-eval tasks need lm-evaluation-harness: pip install 'hub-merge[eval]'."
        ) from None
    if include_path is not None and not Path(include_path).is_dir():
        raise TaskFileError(f"lm-eval include folder {include_path} does not exist.")
    return TaskManager(include_path=include_path, include_defaults=include_path is None)


def _docs(manager: Any, names: list[str], include_path: str | None) -> dict[str, tuple]:
    """name -> (documents' keys, primary metric) for each lm-eval task."""
    from lm_eval.tasks import get_task_dict

    missing = [n for n in names if n not in set(manager.all_tasks)]
    if missing:
        where = f" in {include_path}" if include_path else ""
        raise TaskFileError(
            f"Unknown lm-eval task(s) {missing}{where}; `lm-eval ls tasks` lists them, or pass "
            "--lm-eval-include DIR for local task YAMLs."
        )
    found = get_task_dict(names, manager)
    out = {}
    for name in names:
        task = found[name]
        metric = next(iter(task.aggregation()))
        if not task.higher_is_better().get(metric, True):
            raise ConfigError(
                f"lm-eval task {name!r} reports {metric!r} first, which is lower-is-better; list "
                "a higher-is-better metric (acc, exact_match...) first in its metric_list."
            )
        out[name] = ([doc_key(d) for d in task.eval_docs], metric)
    return out


def _side(name: str, lm_name: str, keys: list[str], metric: str, idx: list[int]) -> LmEvalTask:
    digest = hashlib.sha256("\n".join(keys[i] for i in idx).encode()).hexdigest()[:16]
    return LmEvalTask(name, lm_name, metric, tuple(idx), digest)


def build_evaluators(
    specs: LmEvalSpecs,
    tokenizer: Any,
    *,
    test_fraction: float = 0.3,
    seed: int = 0,
    limit: int | None = None,
    include_path: str | None = None,
    batch_size: int = 16,
    device: Any = "cpu",
) -> tuple[LmEvalEvaluator, LmEvalEvaluator, dict[str, Any]]:
    """The dev and test evaluators of lm-eval tasks, and how they were split (for the card).

    ``specs`` comes from :func:`check_specs` (the search checks them before pulling weights).
    """
    from .splits import test_mask

    names, test_names = specs.names, specs.test_names
    manager = _manager(include_path)
    docs = _docs(manager, names + test_names, include_path)
    dev, test = [], []
    for i, name in enumerate(names):
        keys, metric = docs[name]
        if test_names:
            dev_idx = list(range(len(keys)))
            tkeys, tmetric = docs[test_names[i]]
            test_idx = list(range(len(tkeys)))
            test_side = _side(name, test_names[i], tkeys, tmetric, test_idx[:limit])
        else:
            mask = test_mask(name, keys, float(test_fraction), seed)
            dev_idx = [j for j, t in enumerate(mask) if not t]
            test_idx = [j for j, t in enumerate(mask) if t]
            test_side = _side(name, name, keys, metric, test_idx[:limit])
        dev.append(_side(name, name, keys, metric, dev_idx[:limit]))
        test.append(test_side)
    how: dict[str, Any] = (
        {"kind": "files", "test_files": [f"{PREFIX}{n}" for n in test_names]}
        if test_names
        else {"kind": "fraction", "test_fraction": float(test_fraction), "seed": seed}
    )
    how.update(
        limit=limit,
        dev_rows={t.name: len(t.indices) for t in dev},
        test_rows={t.name: len(t.indices) for t in test},
        lm_eval={t.name: t.metric for t in dev},
    )
    kw = {"batch_size": batch_size, "device": device}
    return (
        LmEvalEvaluator(dev, manager, tokenizer, **kw),
        LmEvalEvaluator(test, manager, tokenizer, **kw),
        how,
    )
