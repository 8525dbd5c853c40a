"""``RunSettings``: a search's settings, one frozen object from the check to the card.

``SearchConfig`` is what a user types (models, tasks, files, devices, and the settings).
:func:`~hub_merge.search.config.check_config` turns it into a ``RunSettings``: the settings
every strategy shares (budget, seed, metric, combine, weights...) plus the strategy's own typed
settings object, validated before anything is pulled. The core reads it (``SearchCore``), the
run folder fingerprints it (:meth:`RunSettings.fingerprint_data`), the family tree stores it
(:meth:`RunSettings.to_dict`, ``family_tree.json``'s ``settings``), and one generic function
turns it back into ``hub-merge search`` flags (:meth:`RunSettings.cli_args`), which the card's
reproduce command prints. Nothing else copies its fields.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from .strategy import fingerprinted_settings, get_strategy, settings_from_dict

MIN_EXPERTS = 2  # a merge of one model is that model
KINSHIP_METRICS = ("pearson", "cosine", "euclidean")


def check_expert_count(count: int, hint: str = "") -> None:
    """The one "a merge needs at least two experts" rule (config, core and CLI all call it)."""
    if count < MIN_EXPERTS:
        raise ConfigError(
            f"A merge search needs at least two experts; got {count}"
            + (f" ({hint})." if hint else ".")
        )


class RecordedSettings(dict):
    """The settings a run recorded for a strategy this install does not have (kept as read)."""


# Shared settings and their ``hub-merge search`` flags (None: no flag; the card notes them).
_FLAGS: dict[str, str | None] = {
    "budget": "--budget",
    "seed": "--seed",
    "metric": "--metric",
    "combine": "--combine",
    "weights": None,
    "kinship_metric": "--kinship-metric",
    "limit": "--limit",
    "test_fraction": "--test-fraction",
    "split_seed": "--split-seed",
}


@dataclass(frozen=True)
class RunSettings:
    """Everything that decides a search's result, checked; see the module docstring.

    ``settings`` is the strategy's settings object (``GreedySettings``...); for a run made by a
    strategy this install lacks it is the plain mapping the run folder recorded.
    ``test_fraction`` is None when the test rows came from their own files (``test_tasks``).
    """

    strategy: str = "greedy"
    settings: Any = None
    budget: int | None = None
    seed: int = 0
    metric: str = "answer_loss"
    combine: str = "mean"
    weights: Mapping[str, float] = field(default_factory=dict)
    kinship_metric: str = "pearson"
    limit: int | None = None
    test_fraction: float | None = 0.3
    split_seed: int = 0

    def __post_init__(self) -> None:
        from ..evaluate.fitness import COMBINES, METRICS

        if self.metric not in METRICS:
            raise ConfigError(f"metric {self.metric!r} is not one of {METRICS}.")
        if self.combine not in COMBINES:
            raise ConfigError(f"combine {self.combine!r} is not one of {COMBINES}.")
        if self.kinship_metric not in KINSHIP_METRICS:
            raise ConfigError(
                f"kinship_metric {self.kinship_metric!r} is not one of {KINSHIP_METRICS}."
            )
        bad = {k: v for k, v in dict(self.weights).items() if not _number(v) or v < 0}
        if bad:
            raise ConfigError(f"Task weights must be numbers >= 0; got {bad}.")
        object.__setattr__(self, "weights", {str(k): float(v) for k, v in self.weights.items()})
        if not isinstance(self.settings, RecordedSettings):  # checked, typed
            object.__setattr__(self, "settings", settings_from_dict(self.strategy, self.settings))

    @property
    def strategy_cls(self) -> Any:
        return get_strategy(self.strategy)

    def strategy_values(self) -> dict[str, Any]:
        """The strategy's settings as a plain mapping."""
        if isinstance(self.settings, RecordedSettings):
            return dict(self.settings)
        return dataclasses.asdict(self.settings)

    # -- the run folder -------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """What ``family_tree.json`` records as ``settings``: the strategy's, then the shared."""
        shared = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        shared.pop("settings")
        shared["weights"] = dict(self.weights)
        return {**self.strategy_values(), **shared}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], strategy: str | None = None) -> RunSettings:
        """Read back :meth:`to_dict` (older runs lack some keys: their defaults are taken).

        Keys that are neither shared nor the strategy's (``stop_reason``, ``dtype``) are ignored.
        """
        name = str(strategy or data.get("strategy") or "greedy")
        shared = {f.name for f in dataclasses.fields(cls)} - {"strategy", "settings"}
        kw = {k: data[k] for k in shared if k in data}
        for key in ("weights", "seed", "split_seed", "metric", "combine", "kinship_metric"):
            if kw.get(key) is None:  # None there means "not recorded": take the default
                kw.pop(key, None)
        try:
            own = {f.name for f in dataclasses.fields(get_strategy(name).settings_type)}
            values: Any = {k: v for k, v in data.items() if k in own}
        except ConfigError:  # made by a strategy this install does not have
            values = RecordedSettings(
                {k: v for k, v in data.items() if k not in shared and k != "strategy"}
            )
        try:
            return cls(strategy=name, settings=values, **kw)
        except ConfigError:  # recorded by a version whose settings this one refuses: as read
            return cls(strategy=name, settings=RecordedSettings(values), **kw)

    def fingerprint_data(
        self,
        *,
        base: str,
        experts: Sequence[str],
        tasks: Sequence[Sequence[str]],
        test: Sequence[Sequence[str]],
        train: Sequence[Sequence[str]] = (),
    ) -> dict[str, Any]:
        """What the run folder fingerprints for resume: these settings and the exact inputs.

        ``budget`` and the strategy's ``resumable`` settings are left out, so a finished run can
        be continued further. The layout is the one earlier versions wrote, so their run folders
        stay resumable.
        """
        data: dict[str, Any] = {
            "base": base,
            "experts": list(experts),
            "tasks": [list(t) for t in tasks],
            "test": [list(t) for t in test],
            "limit": self.limit,
            "strategy": self.strategy,
            "search": fingerprinted_settings(self.strategy_cls, self.settings),
            "metric": self.metric,
            "weights": dict(self.weights),
            "kinship_metric": self.kinship_metric,
            "seed": self.seed,
        }
        if self.combine != "mean":  # runs made before --combine existed stay resumable
            data["combine"] = self.combine
        if train:  # likewise for runs made before --train-tasks existed
            data["train"] = [list(t) for t in train]
        return data

    # -- back to the command line ---------------------------------------------------------

    def cli_args(self) -> list[str]:
        """``--strategy NAME`` and every setting that differs from its default, as CLI flags.

        The card's reproduce command prints them after the models and tasks. Settings the CLI
        cannot spell are in :meth:`notes`.
        """
        args = ["--strategy", self.strategy]
        args += _strategy_args(self.strategy, self.settings)
        for f in dataclasses.fields(self):
            flag = _FLAGS.get(f.name)
            value = getattr(self, f.name)
            if flag is None or value == f.default or value is None:
                continue
            args += [flag, _spell(value)]
        return args

    def notes(self) -> list[str]:
        """Settings no flag spells, as ``#`` lines to print above the command."""
        if self.weights:
            return [f"# task weights (not a CLI flag): {json.dumps(dict(self.weights))}"]
        return []


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _spell(value: Any) -> str:
    if value is None:
        return "none"  # the CLI reads none/null/off as None
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _strategy_args(strategy: str, settings: Any) -> list[str]:
    """The strategy's settings that differ from what the strategy would pick without them.

    A default may depend on other settings (greedy's ``parameters`` on its ``method``), so each
    field is compared with the value the settings type fills in when that field alone is left
    out.
    """
    if isinstance(settings, RecordedSettings):  # an unknown strategy: no defaults to compare
        return []
    cls = type(settings)
    values = dataclasses.asdict(settings)
    args: list[str] = []
    for f in dataclasses.fields(cls):
        value = values[f.name]
        try:
            default = getattr(cls(**{k: v for k, v in values.items() if k != f.name}), f.name)
        except (ConfigError, TypeError, ValueError):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if value == default:
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            spelled = f.metadata.get("flag", f"{flag}/--no-{f.name.replace('_', '-')}")
            args.append(spelled.split("/")[0 if value else 1])
        else:
            args += [flag, _spell(value)]
    return args
