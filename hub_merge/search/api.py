"""``search(SearchConfig(...))``: resolve models and tasks, run a strategy in a run folder, write the winner.

This is the wiring around the pure core (``hub_merge.search.core``): Hub/folder resolution
(pinned shas for lineage, content fingerprints for local folders), the task set, the merge
session on the device, the run folder with its caches, the plots and the materialised winner
(``RUN/winner/``).
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import atomic_write
from ..errors import ConfigError
from ..evaluate import Evaluator
from ..plan import preflight_search
from ..refs import ModelRef
from ..tensors import dtype_name
from .core import SearchCore, SearchResult
from .state import RunFolder, folder_fingerprint, write_json
from .strategy import Expert, Workspace, fingerprinted_settings, get_strategy, settings_from_dict

logger = logging.getLogger(__name__)


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

    def strategy_settings(self) -> Any:
        """The strategy's typed settings (refuses a setting another strategy owns)."""
        return settings_from_dict(self.strategy, self.settings)


def _original(pulled: Any, name: str) -> Expert:
    if pulled.repo_id:
        return Expert(
            name=name,
            source=f"{pulled.repo_id}@{pulled.revision}",
            is_adapter=pulled.kind == "adapter",
            repo_id=pulled.repo_id,
            revision=pulled.revision,
            license=pulled.license,
        )
    path = str(Path(pulled.path).resolve())
    return Expert(
        name=name,
        source=path,
        is_adapter=pulled.kind == "adapter",
        path=path,
        license=pulled.license,
    )


def _unique_names(pulled: list[Any]) -> list[str]:
    names: list[str] = []
    for p in pulled:
        stem = (p.repo_id or str(p.path)).rstrip("/").split("/")[-1] or "model"
        if stem in ("base", "uniform"):
            stem = f"{stem}-expert"
        name, i = stem, 2
        while name in names:
            name, i = f"{stem}-{i}", i + 1
        names.append(name)
    return names


def layer_filters(names: list[str]) -> list[str]:
    """Per layer index, the tensor-name substring selecting that layer (``.layers.3.``, ``h.3.``)."""
    from ..layers import layer_filter, layer_index

    found: dict[int, str] = {}
    for name in names:
        index, text = layer_index(name), layer_filter(name)
        if index is not None and text is not None:
            found.setdefault(index, text)
    return [found[i] for i in sorted(found)]


def search(config: SearchConfig) -> SearchResult:
    """Run (or resume) a merge search with ``config.strategy``; see ``hub_merge.search.core``.

    Returns:
        `SearchResult`: winner id, family tree (baselines included), stop reason, evaluations;
        the run folder holds ``family_tree.json``, ``fitness.png``, ``family_tree.png``,
        ``recipes.json`` and ``winner/``.

    Raises:
        TaskFileError, ConfigError: bad tasks or settings (before anything is scored or written).
        SearchStateError: resuming a run made with other settings, or overwriting one.
        KeyboardInterrupt: after saving state; resume with ``resume=True``.

    >>> r = search(SearchConfig(base="zoo/base", experts=["a", "b", "c"], tasks=["t.jsonl"],
    ...                         out="run", strategy="greedy", settings={"k": 3}))  # doctest: +SKIP
    """
    from transformers import AutoTokenizer

    from .. import hub
    from ..merge import MergeSession
    from .backend import EngineBackend

    strategy_cls = get_strategy(config.strategy)
    settings = config.strategy_settings()
    max_memory = None if config.max_memory is None else parse_bytes(config.max_memory)
    if config.workers is not None or config.ray_address is not None:
        from .distributed import check_reachable

        if config.workers is not None and config.ray_address is not None:
            raise ConfigError("Give --workers N (a local Ray) or --ray-address ADDR, not both.")
        if config.workers is not None and config.workers < 1:
            raise ConfigError(f"--workers must be at least 1; got {config.workers}.")
        if config.ray_address is not None:
            check_reachable(config.ray_address)  # seconds, before anything is pulled
    if len(config.experts) < 2:
        raise ConfigError(f"A merge search needs at least two experts; got {len(config.experts)}.")
    from ..lmeval import METRIC as LM_EVAL_METRIC
    from ..lmeval import is_lm_eval
    from ..splits import Split, split_tasks

    lm_eval = is_lm_eval(config.tasks)
    metric = config.metric
    if lm_eval:  # lm-eval tasks are scored by their own primary metric
        if metric not in ("answer_loss", LM_EVAL_METRIC):
            raise ConfigError(
                f"lm-eval tasks are scored by their own metric; drop --metric {metric}."
            )
        metric = LM_EVAL_METRIC
        from ..lmeval import parse_specs
        from ..splits import check_benchmark_fitness, check_split_settings

        check_split_settings(config.test_fraction, config.test_tasks, config.limit)
        check_benchmark_fitness(parse_specs(config.tasks), allow=config.allow_benchmark_fitness)
        split = Split(dev=[], test=[])  # filled in from lm-eval's documents below
    else:
        split = split_tasks(
            config.tasks,
            test_fraction=config.test_fraction,
            test_paths=config.test_tasks,
            seed=config.split_seed,
            limit=config.limit,
            allow_benchmark_fitness=config.allow_benchmark_fitness,
        )
    tasks = split.dev  # all a strategy ever sees
    train = _train_tasks(config.train_tasks, split)
    preflight_search(config)  # hub_merge.plan: every incompatibility, before any weight download
    hub_kw = {
        "allow_pickle": config.allow_pickle,
        "endpoint": config.endpoint,
        "token": config.token,
        "cache_dir": config.cache_dir,
    }
    base = hub.pull(config.base, **hub_kw)
    if base.kind != "full":
        raise ConfigError(f"The base {config.base} is an adapter; pass the full base model.")
    pulled = [hub.pull(ref, **hub_kw) for ref in config.experts]
    experts = [_original(p, n) for p, n in zip(pulled, _unique_names(pulled), strict=True)]
    base_expert = _original(base, "base")
    fingerprints = {
        e.source: folder_fingerprint(p.path)
        for e, p in zip([base_expert, *experts], [base, *pulled], strict=True)
        if e.path is not None
    }

    session = MergeSession(base.path, device=config.device)
    tokenizer = AutoTokenizer.from_pretrained(base.path)
    if lm_eval:
        from ..lmeval import build_evaluators

        evaluator, test_evaluator, how = build_evaluators(
            config.tasks,
            tokenizer,
            test_specs=config.test_tasks,
            test_fraction=config.test_fraction,
            seed=config.split_seed,
            limit=config.limit,
            include_path=config.lm_eval_include,
            allow_benchmark_fitness=config.allow_benchmark_fitness,
            batch_size=config.batch_size,
            device=session.device,
        )
        split = Split(dev=[], test=[], how=how)
        task_rows = [[t.name, t.digest] for t in evaluator.tasks]
        test_rows = [[t.name, t.digest] for t in test_evaluator.tasks]
    else:
        evaluator = Evaluator(
            tasks,
            tokenizer,
            metric=metric,
            batch_size=config.batch_size,
            device=session.device,
            weights=config.weights or None,
        )
        test_evaluator = Evaluator(
            split.test,
            tokenizer,
            metric=metric,
            batch_size=config.batch_size,
            device=session.device,
            weights=config.weights or None,
        )
        task_rows = [[t.name, t.digest] for t in tasks]
        test_rows = [[t.name, t.digest] for t in split.test]
    folders = {e.source: p.path for e, p in zip(experts, pulled, strict=True)}
    if max_memory is None:
        max_memory = default_max_memory(session)
    backend: Any = EngineBackend(
        session,
        evaluator,
        folders,
        base_source=base_expert.source,
        kinship_metric=config.kinship_metric,
        keep_models=config.keep_models,
        max_memory=max_memory,
        test_evaluator=test_evaluator,
    )
    pool = None
    if config.workers is not None or config.ray_address is not None:
        from .distributed import DistributedBackend, RayPool
        from .worker import WorkerSpec

        if lm_eval:
            raise ConfigError(
                "--workers/--ray-address score task files only; lm-eval tasks run serially."
            )
        spec = WorkerSpec.for_tasks(
            list(tasks),
            base=str(base.path),
            base_source=base_expert.source,
            folders={k: str(v) for k, v in folders.items()},
            metric=metric,
            weights=dict(config.weights),
            batch_size=config.batch_size,
            device=config.device,
            keep_models=config.keep_models,
            max_memory=max_memory,
        )
        pool = RayPool(spec, workers=config.workers, address=config.ray_address)
        backend = DistributedBackend(backend, pool)
    try:
        return _run(
            config,
            strategy_cls,
            settings,
            split,
            tasks,
            experts,
            pulled,
            base,
            base_expert,
            fingerprints,
            session,
            backend,
            metric,
            task_rows,
            test_rows,
            train,
        )
    finally:
        if pool is not None:
            pool.close()


def _run(
    config: SearchConfig,
    strategy_cls: Any,
    settings: Any,
    split: Any,
    tasks: Any,
    experts: list[Expert],
    pulled: list[Any],
    base: Any,
    base_expert: Expert,
    fingerprints: dict[str, str],
    session: Any,
    backend: Any,
    metric: str,
    task_rows: list[list[str]],
    test_rows: list[list[str]],
    train: list[Any],
) -> SearchResult:
    """The search itself, over a ready backend (serial, or fanned out to Ray workers)."""
    core = SearchCore(  # builds the strategy: its settings are checked here, nothing scored yet
        experts,
        backend,
        config.strategy,
        settings,
        base=base_expert,
        tasks=[name for name, _ in task_rows],
        metric=metric,
        weights=config.weights,
        combine=config.combine,
        kinship_metric=config.kinship_metric,
        seed=config.seed,
        budget=config.budget,
        layers=layer_filters(session.names),
        fingerprints=fingerprints,
        progress=config.progress,
        workspace=Workspace(  # read-only inputs: strategies check their experts' files here
            device=str(session.device),
            base_folder=Path(base.path),
            expert_folders={e.name: Path(p.path) for e, p in zip(experts, pulled, strict=True)},
            dev_tasks=list(tasks),
            train_tasks=train,
            progress=config.progress,
        ),
    )
    fingerprinted = {
        "base": base_expert.source,
        "experts": [e.source for e in experts],
        "tasks": task_rows,
        "test": test_rows,
        "limit": config.limit,
        "strategy": strategy_cls.name,
        "search": fingerprinted_settings(strategy_cls, settings),
        "metric": metric,
        "weights": config.weights,
        "kinship_metric": config.kinship_metric,
        "seed": config.seed,
    }
    if config.combine != "mean":  # runs made before --combine existed stay resumable
        fingerprinted["combine"] = config.combine
    if train:  # likewise for runs made before --train-tasks existed
        fingerprinted["train"] = [[t.name, t.digest] for t in train]
    core.attach(RunFolder(config.out, fingerprinted, resume=config.resume))
    workspace = core.ctx.workspace
    workspace.artefacts = core.run.root / strategy_cls.name  # the strategy's own files
    workspace.write = atomic_write
    result = core.run_search()
    tree = result.tree
    tree.split = {**split.how, "description": split.describe()}
    run: RunFolder = core.run  # type: ignore[assignment]
    names = [e.name for e in experts]
    tree.kinship_ids = names
    tree.kinship_matrix = [
        core.kinship(core.recipes[a], [core.recipes[b] for b in names]) for a in names
    ]
    tree.settings = {
        **asdict(settings),
        "strategy": strategy_cls.name,
        "budget": config.budget,
        "seed": config.seed,
        "metric": metric,
        "combine": config.combine,
        "kinship_metric": config.kinship_metric,
        "weights": config.weights,
        "limit": config.limit,
        "test_fraction": None if config.test_tasks else config.test_fraction,
        "stop_reason": result.stop_reason,
        # every merge step is stored in the session's dtype: the card's mergekit YAML says so
        "dtype": dtype_name(session.dtype),
    }
    write_json(run.root / "recipes.json", {k: r.to_dict() for k, r in core.recipes.items()})
    run.save_tree(tree)
    _plots(tree, run.root)

    for wanted in config.materialize:
        node_id = tree.winner if wanted == "winner" else wanted
        if node_id not in core.recipes:
            raise ConfigError(
                f"Cannot materialise {wanted!r}: no such node in the run (nodes: {list(core.recipes)[:8]}...)."
            )
        out = run.root / ("winner" if wanted == "winner" else f"nodes/{node_id}")
        marker = run.root / (
            f"{out.name}.recipe.json" if wanted == "winner" else f"nodes/{node_id}.recipe.json"
        )
        recipe = core.recipes[node_id].to_dict()
        if not (out.exists() and marker.is_file() and json.loads(marker.read_text()) == recipe):
            shutil.rmtree(out, ignore_errors=True)
            out.parent.mkdir(parents=True, exist_ok=True)
            backend.materialize(core.recipes[node_id], out)
            write_json(marker, recipe)
        if wanted == "winner":
            result.winner_path = str(out)
    materialized = [tree.winner if w == "winner" else w for w in config.materialize]
    core.score_test(materialized)  # a node written out may be published: its card needs them
    run.save_tree(tree)
    run.save_state(winner_path=result.winner_path)
    return result


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


def greedy_search(config: SearchConfig) -> SearchResult:
    """The greedy search (``search`` with ``strategy="greedy"``); kept as a thin alias."""
    if config.strategy != "greedy":
        raise ConfigError(f"greedy_search runs the greedy strategy, not {config.strategy!r}.")
    return search(config)


MEMORY_SHARE = 0.25  # of free memory, for the state-dict cache when --max-memory is not given


def default_max_memory(session: Any, share: float = MEMORY_SHARE) -> int:
    """Bytes the state-dict cache may hold: ``share`` of the device's free memory, at least one
    state dict (a smaller cache could not hold a merge's result).

    A node dropped from the cache is merged again from its inputs when the search needs it (a
    child, a kinship), so more is faster, but only up to what the machine has free: a quarter
    leaves room for the scoring model, the base copy, activations and whatever else runs.
    """
    import torch

    state = session.base.state
    size = sum(t.numel() * t.element_size() for t in state.values()) or 1
    device = torch.device(session.device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
    else:
        free = _available_ram()
        if free is None:
            return 4 * size
    return max(size, int(share * free))


_UNITS = {"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12}
_UNITS.update({"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "k": 1e3, "m": 1e6})
_UNITS.update({"g": 1e9, "t": 1e12})


def parse_bytes(value: int | str) -> int:
    """``3GB``, ``512MiB``, ``2.5g`` or a number of bytes -> bytes; anything else: ConfigError."""
    import re

    if isinstance(value, bool):
        raise ConfigError(f"--max-memory takes a size such as 3GB or 512MB; got {value!r}.")
    if isinstance(value, int):
        number, unit = float(value), ""
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
        if not match or match.group(2).lower() not in _UNITS:
            raise ConfigError(f"--max-memory takes a size such as 3GB or 512MB; got {value!r}.")
        number, unit = float(match.group(1)), match.group(2).lower()
    out = int(number * _UNITS[unit])
    if out < 0:
        raise ConfigError(f"--max-memory must not be negative; got {value!r}.")
    return out


def _available_ram() -> int | None:
    """Linux's MemAvailable (free memory plus reclaimable page cache), in bytes, when known."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _plots(tree: Any, root: Path) -> None:
    from .plots import has_trajectory, plot_family_tree, plot_fitness, plot_trajectory

    try:
        plot_fitness(tree, root / "fitness.png")
        plot_family_tree(tree, root / "family_tree.png")
        if has_trajectory(tree):  # a search over mixing coefficients (the swarm)
            plot_trajectory(tree, root / "trajectory.png")
    except (OSError, ValueError) as err:  # a plot must never cost the user a finished search
        logger.warning("Search finished but plotting failed (%s); the run folder is intact.", err)
