"""What scores the search's candidates: the dev and test evaluators, and the backend over them.

JSONL tasks are scored by :class:`hub_merge.evaluate.Evaluator`, lm-eval tasks by
``hub_merge.lmeval`` (whose documents are split only here, once lm-eval has read them). The
backend is :class:`~hub_merge.search.backend.EngineBackend` on this machine, or that backend
fanned out to Ray workers (``hub_merge.search.distributed``), which rebuild the same evaluator
from a :class:`~hub_merge.search.worker.WorkerSpec`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from .config import CheckedConfig, SearchConfig
from .resolve import SearchModels


@dataclass
class Evaluators:
    """The dev evaluator (the fitness), the test one (reported only) and the split behind them."""

    dev: Any
    test: Any
    split: Any  # hub_merge.splits.Split: how the rows were divided (for the card)
    task_rows: list[list[str]]  # [name, digest] of each dev task (fingerprinted)
    test_rows: list[list[str]]  # the same of each test task


def build_evaluators(
    config: SearchConfig, checked: CheckedConfig, tokenizer: Any, device: Any
) -> Evaluators:
    """The evaluators of the checked tasks on ``device``."""
    if checked.lm_eval is not None:
        from ..lmeval import build_evaluators as lm_eval_evaluators
        from ..splits import Split

        evaluator, test_evaluator, how = lm_eval_evaluators(
            checked.lm_eval,
            tokenizer,
            test_fraction=config.test_fraction,
            seed=config.split_seed,
            limit=config.limit,
            include_path=config.lm_eval_include,
            batch_size=config.batch_size,
            device=device,
        )
        return Evaluators(
            evaluator,
            test_evaluator,
            Split(dev=[], test=[], how=how),
            [[t.name, t.digest] for t in evaluator.tasks],
            [[t.name, t.digest] for t in test_evaluator.tasks],
        )
    from ..evaluate import Evaluator

    split = checked.split
    kw = {
        "metric": checked.metric,
        "batch_size": config.batch_size,
        "device": device,
        "weights": checked.run.weights or None,
    }
    dev = Evaluator(split.dev, tokenizer, **kw)
    test = Evaluator(split.test, tokenizer, **kw)
    return Evaluators(
        dev,
        test,
        split,
        [[t.name, t.digest] for t in split.dev],
        [[t.name, t.digest] for t in split.test],
    )


def build_backend(
    config: SearchConfig,
    checked: CheckedConfig,
    models: SearchModels,
    session: Any,
    evaluators: Evaluators,
    max_memory: int,
) -> tuple[Any, Any]:
    """The backend the core scores through, and the Ray pool behind it (None when serial).

    The caller closes the pool when the search ends, however it ends.
    """
    from .backend import EngineBackend

    folders = models.folders()
    backend: Any = EngineBackend(
        session,
        evaluators.dev,
        folders,
        base_source=models.base_expert.source,
        kinship_metric=config.kinship_metric,
        keep_models=config.keep_models,
        max_memory=max_memory,
        test_evaluator=evaluators.test,
    )
    if not config.distributed:
        return backend, None
    from .distributed import DistributedBackend, RayPool
    from .worker import WorkerSpec

    if checked.lm_eval is not None:
        raise ConfigError(
            "--workers/--ray-address score task files only; lm-eval tasks run serially."
        )
    spec = WorkerSpec.for_tasks(
        list(checked.tasks),
        base=str(models.base.path),
        base_source=models.base_expert.source,
        folders={k: str(v) for k, v in folders.items()},
        metric=checked.metric,
        weights=dict(checked.run.weights),
        batch_size=config.batch_size,
        device=config.device,
        keep_models=config.keep_models,
        max_memory=max_memory,
    )
    pool = RayPool(spec, workers=config.workers, address=config.ray_address)
    return DistributedBackend(backend, pool), pool
