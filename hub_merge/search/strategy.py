"""The strategy interface: how a search proposes candidates, with no I/O of its own.

A strategy is an ask/tell optimiser over merge recipes, the loop the ``cma`` package uses::

    strategy = STRATEGIES[name](settings, ctx)    # validates its settings: nothing scored yet
    strategy.prepare()                             # once, after the baselines are scored
    while not core.should_stop(strategy):          # budget, or strategy.stop_reason()
        recipes = strategy.ask()                   # MergeRecipes, never tensors; [] = done
        fitness = core.evaluate(recipes)           # cached by recipe hash; higher is better
        strategy.tell(recipes, fitness)
        core.record(strategy.summary())            # lineage, plots, progress, run folder

The core (``hub_merge.search.core``) owns everything else: the run folder, the score and kinship
caches, resume (by replay: a seeded strategy asks the same recipes again and finds every answer
in the cache), the lineage, the baselines, plots, the winner and the card's data. So a strategy
module holds its algorithm and nothing else: no files, no Hub, no plots, no printing.

Strategies are registered by name with their settings type (``@register_strategy``), the way
merge methods are; modules in ``hub_merge.search.strategies`` register on import
(:func:`load_strategies`).
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..errors import ConfigError
from ..merge.recipe import MergeRecipe

__all__ = [
    "STRATEGIES",
    "Baseline",
    "Expert",
    "Strategy",
    "StrategyContext",
    "Workspace",
    "get_strategy",
    "load_strategies",
    "register_strategy",
    "settings_from_dict",
    "strategy_names",
]


@dataclass(frozen=True)
class Expert:
    """One initial expert as the core resolved it (also its lineage origin).

    ``source`` is the string a :class:`MergeRecipe` uses for it (``org/name@sha`` or a folder);
    the remaining fields are lineage (where it came from) and never change what is merged.
    """

    name: str
    source: str
    is_adapter: bool = False
    repo_id: str | None = None
    revision: str | None = None
    path: str | None = None
    license: str | None = None

    @property
    def recipe(self) -> MergeRecipe:
        """The expert as a candidate: the leaf recipe of its source."""
        return MergeRecipe.leaf(self.source)


@dataclass(frozen=True)
class Baseline:
    """A candidate scored before any strategy runs: an expert, or the uniform average."""

    recipe: MergeRecipe
    fitness: float

    def __iter__(self):  # ``recipe, fitness = ctx.baselines["uniform"]``
        return iter((self.recipe, self.fitness))


@dataclass
class Workspace:
    """Heavy resources for strategies that train rather than search (DAM).

    Search strategies never need it. It is the only door from a strategy to tensors or files:
    the folders are read-only inputs, ``artefacts`` is the strategy's own folder inside the run
    folder (files there are written with ``write``, atomically), ``dev_tasks`` are the fitness
    rows (never the test rows).
    """

    device: str
    base_folder: Path
    expert_folders: dict[str, Path]  # expert name -> local folder
    dev_tasks: list[Any]  # hub_merge.evaluate.Task, dev rows only
    artefacts: Path | None = None
    write: Callable[[Path, bytes], None] | None = None
    # training rows per task (SearchConfig.train_tasks), never overlapping the test rows; a
    # training strategy (DAM) prefers them to the dev rows
    train_tasks: list[Any] = field(default_factory=list)
    progress: bool = True
    # the session's base weights (read-only): a training strategy builds on them instead of
    # loading the base again, so the process holds one base
    base_state: Mapping[str, Any] | None = None


@dataclass
class StrategyContext:
    """What the core tells a strategy about the run. Filled before ``prepare()``.

    Attributes:
        base: the common base's recipe string (a task-vector merge's ``base``).
        experts: the initial experts, in the user's order.
        seed: the run seed; every random draw of the strategy derives from it (resume replays).
        budget: evaluations allowed in the whole run, baselines included (None: no cap).
        baselines: ``"expert:<name>"`` and ``"uniform"`` -> :class:`Baseline` (recipe, dev
            fitness); empty while the strategy is constructed, filled before ``prepare()``.
        kinship: ``kinship(anchor, others) -> values``, cached, several per pass over the
            weights; None when the backend cannot measure it.
        kinship_metric: ``pearson``, ``cosine`` or ``euclidean`` (a distance: smaller = closer).
        layers: per transformer layer, a tensor-name substring that selects exactly that layer's
            tensors (e.g. ``"layers.3."``); a recipe uses them as mergekit ``filter`` values.
        workspace: see :class:`Workspace`; None in pure (backend-only) runs.
    """

    base: str
    experts: list[Expert]
    seed: int = 0
    budget: int | None = None
    baselines: dict[str, Baseline] = field(default_factory=dict)
    kinship: Callable[[MergeRecipe, Sequence[MergeRecipe]], list[float]] | None = None
    kinship_metric: str = "pearson"
    layers: list[str] = field(default_factory=list)
    workspace: Workspace | None = None

    def expert_baselines(self) -> list[Baseline]:
        """The experts' baselines in expert order (after the core scored them)."""
        return [self.baselines[f"expert:{e.name}"] for e in self.experts]


class Strategy(ABC):
    """One way to search. Subclasses set ``name`` and ``settings_type`` and register.

    ``settings_type`` is a dataclass whose defaults are the strategy's defaults (the CLI and the
    Space read them from it). Its fields' ``metadata["help"]`` is the CLI help; a field named in
    ``resumable`` may change when a run is resumed (e.g. more generations); every other field is
    fingerprinted in the run folder. ``__init__`` must refuse bad settings with a ``ConfigError``
    (it runs before anything is scored or written).

    ``tell`` gets fitness HIGHER-is-better (losses negated), one per asked recipe, in order.
    ``summary()`` is JSON-able except that a ``MergeRecipe`` (or a list of them) stands for the
    candidate's lineage node: the core swaps it for the node id. Keys the core reads: ``best``,
    ``best_fitness``, ``top``, ``top_kinship``, ``note``; everything else is kept as the
    generation's ``stats`` (plots and cards read ``mean``, ``std``, ``min``, ``max``, ``sigma``).
    """

    name: ClassVar[str]
    settings_type: ClassVar[type]
    title: ClassVar[str] = ""  # one line for tables and the Space
    paper: ClassVar[str | None] = None  # the paper's link
    resumable: ClassVar[frozenset[str]] = frozenset()
    records_parent_kinship: ClassVar[bool] = False  # measure two-parent children's kinship
    # Learns from each expert's own task rows (the task-to-expert mapping); given training rows,
    # it reads them instead of the dev rows (``compare`` then adds a "+ train rows" row).
    reads_train_rows: ClassVar[bool] = False

    def __init__(self, settings: Any, ctx: StrategyContext) -> None:
        self.settings = settings
        self.ctx = ctx

    def prepare(self) -> None:  # noqa: B027 - an optional hook, not an abstract method
        """Called once after the baselines are scored and before the first ``ask``."""

    @abstractmethod
    def ask(self) -> list[MergeRecipe]:
        """The next candidates to score; an empty list ends the search."""

    @abstractmethod
    def tell(self, recipes: list[MergeRecipe], fitness: list[float]) -> None:
        """The dev fitness (higher is better) of each recipe of the last ``ask``."""

    def stop_reason(self) -> str | None:
        """Why the strategy has stopped (checked before each ``ask``); None while it goes on."""
        return None

    def summary(self) -> dict[str, Any]:
        """The record of the last generation (see the class docstring)."""
        return {}

    @classmethod
    def explain(cls) -> str:
        """A short paragraph for the model card: what this search did, with the paper's link."""
        return cls.title

    @classmethod
    def population(cls, settings: Any, n_experts: int, n_layers: int) -> int:
        """Candidates per generation, for the 'budget below population' check (1: no minimum)."""
        return 1


STRATEGIES: dict[str, type[Strategy]] = {}


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: make a strategy available by its ``name`` (duplicates are refused)."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__name__} needs a class attribute `name`.")
    if not dataclasses.is_dataclass(getattr(cls, "settings_type", None)):
        raise TypeError(f"Strategy {name!r}: settings_type must be a dataclass.")
    if name in STRATEGIES and STRATEGIES[name] is not cls:
        raise ValueError(f"A strategy named {name!r} is already registered.")
    STRATEGIES[name] = cls
    return cls


_LOADED = False


def load_strategies() -> dict[str, type[Strategy]]:
    """Import every module of ``hub_merge.search.strategies`` so each registers itself."""
    global _LOADED
    if not _LOADED:
        from . import strategies

        for info in pkgutil.iter_modules(strategies.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{strategies.__name__}.{info.name}")
        _LOADED = True
    return STRATEGIES


def strategy_names() -> list[str]:
    return sorted(load_strategies())


def get_strategy(name: str) -> type[Strategy]:
    """The registered strategy class; an unknown name is a one-line ConfigError listing all."""
    found = load_strategies().get(name)
    if found is None:
        raise ConfigError(
            f"Unknown search strategy {name!r}; choose one of: {', '.join(strategy_names())}."
        )
    return found


def settings_owner(field_name: str) -> list[str]:
    """Names of the strategies whose settings have a field of this name."""
    return [
        n
        for n, cls in sorted(load_strategies().items())
        if field_name in {f.name for f in dataclasses.fields(cls.settings_type)}
    ]


def settings_from_dict(strategy: str, values: Mapping[str, Any] | Any | None) -> Any:
    """Build a strategy's settings from a mapping (or pass its own settings object through).

    Raises:
        ConfigError: a key that is not this strategy's setting: it says which strategy owns it.
    """
    cls = get_strategy(strategy)
    if values is None:
        return cls.settings_type()
    if isinstance(values, cls.settings_type):
        return values
    if dataclasses.is_dataclass(values):
        raise ConfigError(
            f"Settings {type(values).__name__} belong to another strategy than {strategy!r}; "
            f"pass {cls.settings_type.__name__}."
        )
    if not isinstance(values, Mapping):
        raise ConfigError(f"Strategy settings must be a mapping; got {type(values).__name__}.")
    own = {f.name for f in dataclasses.fields(cls.settings_type)}
    for key in values:
        if key not in own:
            owners = [o for o in settings_owner(key) if o != strategy]
            where = (
                f"it belongs to strategy {', '.join(owners)}" if owners else "no strategy has it"
            )
            raise ConfigError(
                f"Setting {key!r} is not a setting of strategy {strategy!r} ({where}); "
                f"{strategy} takes: {', '.join(sorted(own))}."
            )
    try:
        return cls.settings_type(**dict(values))
    except TypeError as err:
        raise ConfigError(f"Bad settings for strategy {strategy!r}: {err}") from None


def fingerprinted_settings(strategy: type[Strategy], settings: Any) -> dict[str, Any]:
    """The settings that change which candidates are made (all but ``resumable``)."""
    data = dataclasses.asdict(settings)
    for name in strategy.resumable:
        data.pop(name, None)
    return data
