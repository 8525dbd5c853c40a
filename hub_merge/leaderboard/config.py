"""``CompareConfig``: a search's inputs, several strategies, and every check made before scoring.

``hub-merge compare`` takes what ``hub-merge search`` takes (base, experts, tasks, optional test
and training files) plus the strategies to run, their budgets and the number of seeds. Each
(row, seed) becomes one ``SearchConfig`` (:meth:`CompareConfig.runs`), and each of those goes
through the search's own :func:`~hub_merge.search.config.check_config` here, before anything is
pulled or scored: an unknown strategy, a budget for a strategy that is not listed, ``--seeds 0``
or a training file that shares a prompt with a test row each fail in one typed line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError

MOE = "moe"
MOA = "moa"
DEFAULT_STRATEGIES: tuple[str, ...] = ()  # empty: every registered strategy


def train_row(strategy: str) -> str:
    """The row of ``strategy`` trained on the user's training rows (``dam+train``)."""
    return f"{strategy}+train"


def row_title(row: str) -> str:
    """A row's label in tables: ``dam+train`` reads "dam + train rows"."""
    return row.replace("+train", " + train rows")


@dataclass(frozen=True)
class RunSpec:
    """One strategy run of a compare: its leaderboard row, seed, run subfolder and settings."""

    row: str  # leaderboard row: the strategy's name, or ``dam+train``
    strategy: str
    seed: int
    folder: str  # subfolder of the compare folder
    budget: int | None
    settings: Mapping[str, Any]
    train: bool  # reads the training rows


@dataclass
class CompareConfig:
    """Everything ``compare_strategies`` needs; the search's inputs plus the strategies to run.

    ``budget``: evaluations per run, one number shared evenly between the strategies (``60``
    over four strategies gives each run 15), or one per strategy (``{"greedy": 30, "evolve": 60}``;
    strategies left out run to their own stop). ``settings``: each strategy's own settings
    (``{"evolve": {"population": 8}}``). ``seeds``: each strategy runs with seeds ``seed`` ...
    ``seed + seeds - 1`` on the same dev/test split (``split_seed``), and its row shows the mean
    and the spread. ``moe``/``moa`` add those rows (top-``moe_top_k`` routing; MoA with the
    base as aggregator).
    """

    base: Any  # a Hub reference or a folder, as SearchConfig takes it (str or ModelRef)
    experts: list[Any]
    tasks: list[str]
    out: str
    strategies: list[str] = field(default_factory=list)  # empty: every registered strategy
    budget: int | Mapping[str, int] | None = None
    settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    seeds: int = 1
    seed: int = 0
    moe: bool = False
    moa: bool = False
    moe_top_k: int = 1
    exact_match: bool = True  # exact match on the test rows (generation) for every model row
    metric: str = "answer_loss"
    weights: dict[str, float] = field(default_factory=dict)
    combine: str = "mean"
    limit: int | None = None
    test_fraction: float = 0.3
    split_seed: int = 0
    test_tasks: list[str] = field(default_factory=list)
    train_tasks: list[str] = field(default_factory=list)
    allow_benchmark_fitness: bool = False
    batch_size: int | str = 16
    device: str = "auto"
    keep_models: int | None = None
    max_memory: int | str | None = None
    workers: int | None = None  # score every run's candidates on N local Ray workers
    ray_address: str | None = None  # or on the Ray cluster at this address
    resume: bool = False
    progress: bool = True
    allow_pickle: bool = False
    endpoint: str | None = None
    cache_dir: str | None = None
    token: str | None = field(default=None, repr=False)
    # Set to stop every run at its next candidate boundary (the Space's cancel and time cap);
    # handed to each run's SearchConfig.cancel, never part of the fingerprint.
    cancel: Any = field(default=None, repr=False, compare=False)

    def strategy_list(self) -> list[str]:
        """The strategies to run, checked (default: every registered one), in the given order."""
        from ..search.strategy import get_strategy, strategy_names

        names = list(self.strategies) or strategy_names()
        for name in names:
            get_strategy(name)  # one line listing the strategies
        if len(set(names)) != len(names):
            raise ConfigError(f"A strategy is listed twice in --strategies: {', '.join(names)}.")
        return names

    def budgets(self) -> dict[str, int | None]:
        """Each listed strategy's evaluation budget per run (None: the strategy's own stop)."""
        names = self.strategy_list()
        if self.budget is None:
            return dict.fromkeys(names)
        if isinstance(self.budget, Mapping):
            unknown = sorted(set(self.budget) - set(names))
            if unknown:
                raise ConfigError(
                    f"--budget names {', '.join(unknown)}, which is not among --strategies "
                    f"({', '.join(names)}); list it there or drop its budget."
                )
            out = {n: self.budget.get(n) for n in names}
        else:
            out = dict.fromkeys(names, int(self.budget) // len(names))
        bad = {n: b for n, b in out.items() if b is not None and b < 1}
        if bad:
            raise ConfigError(f"Budgets must be at least 1 evaluation; got {bad}.")
        return out

    def check(self) -> list[RunSpec]:
        """Every check that needs no model: strategies, budgets, seeds, settings; the runs."""
        if self.seeds < 1:
            raise ConfigError(f"--seeds must be at least 1; got {self.seeds}.")
        if self.moe_top_k < 1:
            raise ConfigError(f"--moe-top-k must be at least 1; got {self.moe_top_k}.")
        names = self.strategy_list()
        if self.moe or self.moa:
            from ..lmeval import is_lm_eval

            if is_lm_eval(self.tasks):
                raise ConfigError(
                    "--moe and --moa score task files (JSONL rows); with lm-eval tasks, drop them."
                )
        rows = set(names) | ({MOA} if self.moa else set())
        unknown = sorted(set(self.settings) - rows)
        if unknown:
            raise ConfigError(
                f"Settings given for {', '.join(unknown)}, which is not among --strategies "
                f"({', '.join(names)}){' or --moa' if not self.moa else ''}."
            )
        if self.moa:
            self.moa_settings().check()
        from ..search.strategy import get_strategy

        budgets = self.budgets()
        runs: list[RunSpec] = []
        rows: list[tuple[str, str, bool]] = []
        for n in names:
            rows.append((n, n, False))  # the fair row: the dev rows every strategy reads
            if self.train_tasks and get_strategy(n).reads_train_rows:
                rows.append((train_row(n), n, True))  # and the one on the user's training rows
        for row, strategy, train in rows:
            for seed in range(self.seed, self.seed + self.seeds):
                runs.append(
                    RunSpec(
                        row=row,
                        strategy=strategy,
                        seed=seed,
                        folder=f"{row.replace('+', '-')}-seed{seed}",
                        budget=budgets[strategy],
                        settings=dict(self.settings.get(strategy) or {}),
                        train=train,
                    )
                )
        return runs

    def moa_settings(self) -> Any:
        """MoA's settings: one proposer round, and the reference's sampling unless ``settings``
        names others (``{"moa": {"max_new_tokens": 32}}``). Raises ConfigError on unknown keys."""
        from ..moa import MoaSettings

        given = dict(self.settings.get(MOA) or {})
        known = {f.name for f in dataclasses.fields(MoaSettings)}
        unknown = sorted(set(given) - known)
        if unknown:
            raise ConfigError(
                f"Unknown MoA setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}."
            )
        return MoaSettings(**{"layers": 1, **given})

    def search_config(self, run: RunSpec | None = None, *, resume: bool = False) -> Any:
        """The ``SearchConfig`` of one run (or, without one, of the shared inputs alone)."""
        from ..search.config import SearchConfig

        kw = {f.name: getattr(self, f.name) for f in dataclasses.fields(SearchConfig)
              if hasattr(self, f.name) and f.name not in ("out", "budget", "seed", "settings",
                                                          "strategy", "train_tasks", "resume")}  # fmt: skip
        if run is None:
            return SearchConfig(**kw, out=self.out, strategy="greedy", resume=resume)
        return SearchConfig(
            **kw,
            out=str(_join(self.out, run.folder)),
            strategy=run.strategy,
            settings=dict(run.settings),
            budget=run.budget,
            seed=run.seed,
            train_tasks=list(self.train_tasks) if run.train else [],
            resume=resume,
        )

    def fingerprint_data(self) -> dict[str, Any]:
        """The inputs every row shares (a resumed compare must be given the same)."""
        return {
            "base": str(self.base),  # a ModelRef (the Space's Hub references) as its text
            "experts": [str(e) for e in self.experts],
            "tasks": list(self.tasks),
            "test_tasks": list(self.test_tasks),
            "train_tasks": list(self.train_tasks),
            "metric": self.metric,
            "weights": dict(self.weights),
            "combine": self.combine,
            "limit": self.limit,
            "test_fraction": self.test_fraction,
            "split_seed": self.split_seed,
        }


def parse_budget(text: str | None) -> int | dict[str, int] | None:
    """``60`` (shared evenly) or ``dam=30,evolve=60`` (per strategy); None/empty: no budget.

    Raises:
        ConfigError: anything else, quoting it.
    """
    if text is None or not str(text).strip():
        return None
    text = str(text).strip()
    if "=" not in text:
        if not text.isdigit():
            raise ConfigError(f"--budget takes N or STRATEGY=N,...; got {text!r}.")
        return int(text)
    out: dict[str, int] = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        name, value = name.strip(), value.strip()
        if not name or not value.isdigit() or name in out:
            raise ConfigError(f"--budget takes N or STRATEGY=N,...; got {text!r} (at {part!r}).")
        out[name] = int(value)
    return out


def parse_strategies(text: str | Sequence[str] | None) -> list[str]:
    """``greedy,evolve`` -> ``["greedy", "evolve"]`` (names are checked by the config)."""
    if text is None:
        return []
    parts = text.split(",") if isinstance(text, str) else list(text)
    return [p.strip() for p in parts if p.strip()]


def _join(root: str, sub: str) -> Any:
    from pathlib import Path

    return Path(root) / sub
