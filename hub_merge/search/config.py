"""``SearchConfig`` and its checks: everything that can be refused before a weight is pulled.

:func:`check_config` validates and normalises a config in the order the search has always
checked it (strategy and settings, memory, workers, experts, tasks and their dev/test split,
training rows, then ``hub_merge.plan``'s preflight), so a bad run fails in seconds, writes
nothing and downloads nothing. What it returns is all the later steps read besides the config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from ..refs import ModelRef
from .memory import parse_bytes
from .settings import RunSettings, check_expert_count
from .strategy import Strategy, get_strategy, settings_from_dict


@dataclass
class SearchConfig:
    """Everything a search needs: shared settings once, the strategy's own as one typed object.

    ``settings`` is the strategy's settings object (e.g. ``GreedySettings(k=3)``) or a mapping of
    its fields (``{"k": 3}``); None takes the strategy's defaults. Models are Hub refs
    (``org/name[@rev]``) or local folders. Settings that change results are fingerprinted in the
    run folder; ``budget`` and the strategy's ``resumable`` settings (greedy: generations,
    patience) may change on resume, so a finished run can be continued further.
    """

    base: str | ModelRef  # a ModelRef is used as given (the Space passes Hub-only refs)
    experts: list[str | ModelRef]
    tasks: list[str]
    out: str
    strategy: str = "greedy"
    settings: Any = None
    budget: int | None = None  # evaluations in the whole run, baselines included
    seed: int = 0  # every random draw (DARE masks, CMA-ES samples) derives from it
    metric: str = "answer_loss"
    weights: dict[str, float] = field(default_factory=dict)
    combine: str = "mean"  # tasks -> fitness: mean, or harmonic (hub_merge.evaluate.COMBINES)
    kinship_metric: str = "pearson"
    limit: int | None = None  # at most N dev rows and N test rows per task
    test_fraction: float = 0.3  # share of each task's rows held out as test (hash of the prompt)
    # Seed of the dev/test split only: apart from `seed`, so runs of one strategy over several
    # seeds are all scored on the same test rows (their spread is the strategy's, not the split's).
    split_seed: int = 0
    test_tasks: list[str] = field(default_factory=list)  # one test file per task instead
    # training rows for strategies that train (DAM), matched to tasks by file name; never
    # read by the search strategies, and refused when they share a prompt with the test rows
    train_tasks: list[str] = field(default_factory=list)
    allow_benchmark_fitness: bool = False  # optimise against a public benchmark's rows anyway
    lm_eval_include: str | None = None  # folder of lm-eval task YAMLs (tasks = lm-eval:NAME)
    batch_size: int | str = 16  # or "auto": from free GPU memory (16 on CPU)
    device: str = "auto"
    resume: bool = False
    progress: bool = True
    materialize: list[str] = field(default_factory=lambda: ["winner"])  # node ids, or "winner"
    keep_models: int | None = None  # at most N state dicts cached (besides max_memory)
    # bytes (or "3GB", "512MB") the state-dict cache may hold; None: MEMORY_SHARE of free memory
    max_memory: int | str | None = None
    workers: int | None = None  # score on N local Ray workers (hub-merge[distributed])
    ray_address: str | None = None  # or on the Ray cluster at this address
    allow_pickle: bool = False
    endpoint: str | None = None  # Hub URL (default: HF_ENDPOINT / the public Hub)
    cache_dir: str | None = None  # Hub download cache (default: huggingface_hub's)
    token: str | None = field(default=None, repr=False)  # never stored in the run folder
    # A threading.Event that stops the search, saved as interrupted, at the next candidate
    # boundary (the Space's cancel button); never part of the run's fingerprint.
    cancel: Any = field(default=None, repr=False, compare=False)

    def strategy_settings(self) -> Any:
        """The strategy's typed settings (refuses a setting another strategy owns)."""
        return settings_from_dict(self.strategy, self.settings)

    @property
    def distributed(self) -> bool:
        """Whether candidates are scored on Ray workers (local or a cluster)."""
        return self.workers is not None or self.ray_address is not None


@dataclass
class CheckedConfig:
    """What :func:`check_config` found: the run's settings, and the inputs resolved for it."""

    run: RunSettings  # every setting that decides the result, frozen (hub_merge.search.settings)
    max_memory: int | None  # bytes, or None: a share of free memory once the device is known
    metric: str  # ``lm_eval`` for lm-eval tasks (each task's own metric)
    lm_eval: Any  # hub_merge.lmeval.LmEvalSpecs, or None for JSONL task files
    split: Any  # hub_merge.splits.Split (empty for lm-eval: its documents are read later)
    train: list[Any]  # training rows (DAM), never a test row

    @property
    def strategy_cls(self) -> type[Strategy]:
        return self.run.strategy_cls

    @property
    def settings(self) -> Any:
        """The strategy's typed settings."""
        return self.run.settings

    @property
    def tasks(self) -> list[Any]:
        """The dev tasks: all a strategy ever sees."""
        return self.split.dev


def check_config(config: SearchConfig) -> CheckedConfig:
    """Validate ``config`` before anything is pulled, scored or written; raise the first problem.

    Raises:
        TaskFileError, ConfigError: bad tasks or settings; ``hub_merge.plan``'s blocking issues.
    """
    from ..lmeval import METRIC as LM_EVAL_METRIC
    from ..lmeval import check_specs, is_lm_eval
    from ..plan import preflight_search
    from ..splits import Split, split_tasks

    strategy_cls = get_strategy(config.strategy)
    settings = config.strategy_settings()
    max_memory = None if config.max_memory is None else parse_bytes(config.max_memory)
    if config.distributed:
        from .distributed import check_reachable

        if config.workers is not None and config.ray_address is not None:
            raise ConfigError("Give --workers N (a local Ray) or --ray-address ADDR, not both.")
        if config.workers is not None and config.workers < 1:
            raise ConfigError(f"--workers must be at least 1; got {config.workers}.")
        if config.ray_address is not None:
            check_reachable(config.ray_address)  # seconds, before anything is pulled
    check_expert_count(len(config.experts))
    metric = config.metric
    lm_eval = None
    if is_lm_eval(config.tasks):  # lm-eval tasks are scored by their own primary metric
        if metric not in ("answer_loss", LM_EVAL_METRIC):
            raise ConfigError(
                f"lm-eval tasks are scored by their own metric; drop --metric {metric}."
            )
        metric = LM_EVAL_METRIC
        lm_eval = check_specs(
            config.tasks,
            test_specs=config.test_tasks,
            test_fraction=config.test_fraction,
            limit=config.limit,
            allow_benchmark_fitness=config.allow_benchmark_fitness,
        )
        split = Split(dev=[], test=[])  # filled in from lm-eval's documents later
    else:
        split = split_tasks(
            config.tasks,
            test_fraction=config.test_fraction,
            test_paths=config.test_tasks,
            seed=config.split_seed,
            limit=config.limit,
            allow_benchmark_fitness=config.allow_benchmark_fitness,
        )
    train = _train_tasks(config.train_tasks, split)
    run = RunSettings(
        strategy=strategy_cls.name,
        settings=settings,
        budget=config.budget,
        seed=config.seed,
        metric=metric,
        combine=config.combine,
        weights=dict(config.weights),
        kinship_metric=config.kinship_metric,
        limit=config.limit,
        test_fraction=None if config.test_tasks else config.test_fraction,
        split_seed=config.split_seed,
    )
    preflight_search(config)  # hub_merge.plan: every incompatibility, before any weight download
    return CheckedConfig(run, max_memory, metric, lm_eval, split, train)


def _train_tasks(paths: list[str], split: Any) -> list[Any]:
    """Training rows, one file per task (named like it), none of them a test row."""
    from ..errors import TaskFileError
    from ..evaluate import load_tasks

    if not paths:
        return []
    train = load_tasks(paths)
    names = {t.name for t in split.dev}
    test = {ex.prompt for t in split.test for ex in t.examples}
    for t in train:
        if t.name not in names:
            raise TaskFileError(
                f"Training file {t.path} is named {t.name!r}, which is no task of this search "
                f"({', '.join(sorted(names))}); name it after its task."
            )
        leaked = [ex.prompt for ex in t.examples if ex.prompt in test]
        if leaked:
            raise TaskFileError(
                f"Training file {t.path} holds {len(leaked)} test prompt(s) (e.g. "
                f"{leaked[0]!r}); the test rows must stay unseen. Remove them."
            )
    return train
