"""``greedy_search(SearchConfig(...))``: resolve models and tasks, search in a run folder, write the winner.

This is the wiring around the pure algorithm in ``greedy``: Hub/folder resolution (pinned shas for
lineage), the task set, the merge session on the device, the run folder with its caches, the
plots and the materialised winner (``RUN/winner/``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..evaluate import Evaluator, load_tasks
from ..kinship import self_kinship
from ..refs import ModelRef
from ..tensors import dtype_name
from .greedy import GreedySearch, GreedySettings, Original, SearchResult
from .state import RunFolder, write_json

logger = logging.getLogger(__name__)


@dataclass
class SearchConfig:
    """Everything a greedy search needs. Models are Hub refs (``org/name[@rev]``) or folders.

    Settings that change results (models, tasks, limit, metric, method, parameters, k, kinship
    options) are fingerprinted in the run folder; ``generations`` and ``patience`` may change on
    resume, so a finished run can be continued further.
    """

    base: str | ModelRef  # a ModelRef is used as given (the Space passes Hub-only refs)
    experts: list[str | ModelRef]
    tasks: list[str]
    out: str
    k: int = 3
    generations: int = 5
    method: str = "slerp"
    parameters: dict[str, Any] | None = None  # default: DEFAULT_PARAMETERS[method] (paper's SLERP)
    parent_as_base: bool | None = None  # default: True for slerp (fitter parent is base_model)
    kinship_guided: bool = True
    kinship_stop: float | None = 0.9
    kinship_metric: str = "pearson"
    patience: int = 2
    metric: str = "answer_loss"
    weights: dict[str, float] = field(default_factory=dict)
    limit: int | None = None
    batch_size: int = 16
    device: str = "auto"
    resume: bool = False
    progress: bool = True
    materialize: list[str] = field(default_factory=lambda: ["winner"])  # node ids, or "winner"
    keep_models: int | None = None  # merged state dicts kept in memory; None: fit to free memory
    allow_pickle: bool = False
    endpoint: str | None = None  # Hub URL (default: HF_ENDPOINT / the public Hub)
    cache_dir: str | None = None  # Hub download cache (default: huggingface_hub's)
    token: str | None = field(default=None, repr=False)  # never stored in the run folder

    def settings(self) -> GreedySettings:
        return GreedySettings(
            k=self.k,
            generations=self.generations,
            method=self.method,
            parameters=self.parameters,
            parent_as_base=self.parent_as_base,
            kinship_guided=self.kinship_guided,
            kinship_stop=self.kinship_stop,
            kinship_metric=self.kinship_metric,
            patience=self.patience,
            metric=self.metric,
            weights=dict(self.weights),
        )


def _original(pulled: Any, name: str) -> Original:
    if pulled.repo_id:
        source = f"{pulled.repo_id}@{pulled.revision}"
        return Original(
            name=name,
            source=source,
            repo_id=pulled.repo_id,
            revision=pulled.revision,
            is_adapter=pulled.kind == "adapter",
            license=pulled.license,
        )
    path = str(Path(pulled.path).resolve())
    return Original(
        name=name,
        source=path,
        path=path,
        is_adapter=pulled.kind == "adapter",
        license=pulled.license,
    )


def _unique_names(pulled: list[Any]) -> list[str]:
    names: list[str] = []
    for p in pulled:
        stem = (p.repo_id or str(p.path)).rstrip("/").split("/")[-1] or "model"
        name, i = stem, 2
        while name in names:
            name, i = f"{stem}-{i}", i + 1
        names.append(name)
    return names


def greedy_search(config: SearchConfig) -> SearchResult:
    """Run (or resume) a kinship-guided top-k greedy merge search; see ``hub_merge.search.greedy``.

    Returns:
        `SearchResult`: winner id, family tree, stop reason, evaluations used; the run folder holds
        ``family_tree.json``, ``fitness.png``, ``family_tree.png``, ``recipes.json`` and ``winner/``.

    Raises:
        TaskFileError, ConfigError: bad tasks or settings (before anything is loaded).
        SearchStateError: resuming a run made with other settings, or overwriting one.
        KeyboardInterrupt: after saving state; resume with ``resume=True``.

    >>> r = greedy_search(SearchConfig(base="zoo/base", experts=["a", "b", "c"],
    ...                                tasks=["t.jsonl"], out="run", limit=32))  # doctest: +SKIP
    """
    from transformers import AutoTokenizer

    from .. import hub
    from ..merge import MergeSession
    from .backend import EngineBackend

    settings = config.settings()
    if len(config.experts) < 2:
        raise ConfigError(f"A greedy search needs at least two experts; got {len(config.experts)}.")
    tasks = load_tasks(config.tasks, limit=config.limit)
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
    originals = [_original(p, n) for p, n in zip(pulled, _unique_names(pulled), strict=True)]
    base_original = _original(base, "base")
    fingerprinted = {
        "base": base_original.source,
        "experts": [o.source for o in originals],
        "tasks": [[t.name, t.digest] for t in tasks],
        "limit": config.limit,
        "search": settings.fingerprinted(),
    }
    run = RunFolder(config.out, fingerprinted, resume=config.resume)

    session = MergeSession(base.path, device=config.device)
    tokenizer = AutoTokenizer.from_pretrained(base.path)
    evaluator = Evaluator(
        tasks,
        tokenizer,
        metric=settings.metric,
        batch_size=config.batch_size,
        device=session.device,
        weights=settings.weights or None,
    )
    folders = {o.source: p.path for o, p in zip(originals, pulled, strict=True)}
    backend = EngineBackend(
        session,
        evaluator,
        folders,
        kinship_metric=settings.kinship_metric,
        keep_models=config.keep_models or auto_keep_models(session),
    )
    search = GreedySearch(
        originals,
        backend,
        settings,
        run=run,
        base=base_original,
        tasks=[t.name for t in tasks],
        progress=config.progress,
    )
    result = search.run_search()
    tree = result.tree
    # kinship of the originals (all measured already as generation-1 parents' kinship)
    names = [o.name for o in originals]
    tree.kinship_ids = names
    same = self_kinship(settings.kinship_metric)  # the diagonal: 0 for a distance, 1 otherwise
    tree.kinship_matrix = [[same if a == b else search.kinship(a, b) for b in names] for a in names]
    tree.settings = {
        **asdict(settings),
        "limit": config.limit,
        "stop_reason": result.stop_reason,
        # every merge step is stored in the session's dtype: the card's mergekit YAML says so
        "dtype": dtype_name(session.dtype),
    }
    write_json(run.root / "recipes.json", search.recipes)
    run.save_tree(tree)
    _plots(tree, run.root)

    for wanted in config.materialize:
        node_id = tree.winner if wanted == "winner" else wanted
        if node_id not in search.recipes:
            raise ConfigError(
                f"Cannot materialise {wanted!r}: no such node in the run (nodes: {list(search.recipes)[:8]}...)."
            )
        out = run.root / ("winner" if wanted == "winner" else f"nodes/{node_id}")
        marker = run.root / (
            f"{out.name}.recipe.json" if wanted == "winner" else f"nodes/{node_id}.recipe.json"
        )
        recipe = search.recipes[node_id]
        if out.exists() and marker.is_file() and json.loads(marker.read_text()) == recipe:
            pass  # already written by an earlier (resumed) call
        else:
            import shutil

            shutil.rmtree(out, ignore_errors=True)
            out.parent.mkdir(parents=True, exist_ok=True)
            backend.materialize(recipe, out)
            write_json(marker, recipe)
        if wanted == "winner":
            result.winner_path = str(out)
    run.save_state(winner_path=result.winner_path)
    return result


def auto_keep_models(session: Any, share: float = 0.4, most: int = 16) -> int:
    """How many merged state dicts to keep: about ``share`` of the free memory of the device.

    A node dropped from the cache is rebuilt from its parents, recursively, when the search needs
    it again (kinship with the best model, a child), so a cache far smaller than the pool makes
    late generations re-merge whole ancestries. Keeping more costs only memory, so use what is
    free: up to 16 SmolLM2-135M nodes (540 MB each) on a laptop, 2 for a 7B model on one GPU.
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
            return 4
    return max(2, min(most, int(share * free / size)))


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
    from .plots import plot_family_tree, plot_fitness

    try:
        plot_fitness(tree, root / "fitness.png")
        plot_family_tree(tree, root / "family_tree.png")
    except (OSError, ValueError) as err:  # a plot must never cost the user a finished search
        logger.warning("Search finished but plotting failed (%s); the run folder is intact.", err)
