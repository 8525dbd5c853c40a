"""``hub-merge demo``: the whole product, end to end, on an embedded local Hub.

A user who has never merged a model runs one command and sees every step a real merge takes:
a Hub holding a base model and its experts (each its own repo with its own card), discovery
through the Hub's model tree, pull, kinship, then the mission's kinship-guided greedy search and
DAM side by side on one dev/test split (``hub_merge.leaderboard.compare_strategies``: one set of
baselines, one score cache), the leaderboard against each expert, the uniform average and the
oracle router, the push of the row chosen on dev scores with the leaderboard on its card, and
that model pulled back from the Hub answering the held-out test prompts.
``strategies=("greedy",)`` (``hub-merge demo --strategies greedy``) keeps the shorter path: one
search, its winner published.

Everything lives in one folder (default ``./hub-merge-demo``): the local Hub's data (``hub/``),
the download cache (``hf-cache/``), the compare (``compare/``; the one search of the shorter
path: ``run/``) and ``kinship.png``. A second run reuses all of it: the zoo is cached, the Hub
keeps its commits, the compare (or search) resumes its finished runs without re-evaluating, and
the push of unchanged files makes no new commit.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import hub
from .card import base_models
from .comparison import Comparison, compare
from .demo_board import (
    DEMO_STRATEGIES,
    Answers,
    answer_test_prompts,
    compare_settings,
    comparison_table,
    generate_answers,
    held_out_table,
    row_label,
)
from .errors import ConfigError, SearchStateError
from .kinship import KinshipResult, kinship_matrix
from .leaderboard import CompareConfig, Leaderboard, compare_strategies
from .localhub import LocalHub
from .publish import PublishResult, publish, publish_row
from .rss import RssLog, RssStep, mark, peak_rss_bytes, return_freed_memory
from .search import SearchConfig, SearchResult, search
from .zoo import Zoo, build_smol_zoo, build_tiny_zoo, upload_zoo

logger = logging.getLogger(__name__)

__all__ = [
    "DemoConfig",
    "DemoResult",
    "comparison_table",
    "final_table",
    "peak_rss_bytes",
    "row_label",
    "run_demo",
    "summary_table",
]

ZOO_USER = "hub-merge-zoo"  # owner of the seeded experts (zoo.REPO_OWNER)
DEMO_USER = "demo"  # the user who merges and publishes
# One fp32 SmolLM2-135M state dict (see the search call): the demo's goal is a peak of 3 GB.
DEMO_CACHE_BYTES = 600_000_000


@dataclass
class DemoConfig:
    """Settings of the demo; the defaults are what ``hub-merge demo`` runs.

    ``quick`` uses the tiny zoo (seconds; too small for merging to help) instead of SmolLM2-135M
    with four LoRA experts (minutes on a laptop CPU; merging beats every expert).
    """

    quick: bool = False
    out: Path = Path("hub-merge-demo")
    repo_id: str | None = None  # default: demo/<zoo>-merged
    # The leaderboard's rows (default greedy and DAM); one name keeps the shorter path: that
    # search alone, its winner published.
    strategies: tuple[str, ...] = DEMO_STRATEGIES
    strategy: str | None = None  # the one strategy of the shorter path (strategies=(name,))
    k: int = 3  # greedy's top-k
    generations: int | None = None  # greedy's generations; default: 2
    dam_steps: int | None = None  # DAM's steps; default DAM_SETTINGS (30 smol, 5 quick)
    budget: int | None = None  # evaluations; default: the strategy's own stop (evolve: 40)
    limit: int | None = None  # examples per task; default 16 (quick) or 32
    device: str = "auto"
    progress: bool = True
    zoo_cache: Path | None = None  # parent of zoo/<name>; default $HUB_MERGE_CACHE or ~/.cache

    def __post_init__(self) -> None:
        if self.strategy is not None:  # DemoConfig(strategy="evolve"): the shorter path
            self.strategies = (self.strategy,)
        self.strategies = tuple(self.strategies)
        if not self.strategies:
            raise ConfigError("The demo needs at least one strategy, e.g. greedy.")
        if len(set(self.strategies)) != len(self.strategies):
            raise ConfigError(f"A strategy is listed twice: {', '.join(self.strategies)}.")
        if len(self.strategies) == 1:
            self.strategy = self.strategies[0]

    @property
    def leaderboard(self) -> bool:
        """Whether the demo compares several strategies (else: one search, the shorter path)."""
        return len(self.strategies) > 1


@dataclass
class DemoResult:
    """What the demo did, for printing or for a test to check."""

    out: Path
    endpoint: str
    zoo: str
    base: str
    discovered: list[hub.Candidate]
    experts: dict[str, str]  # task -> repo id
    kinship: KinshipResult
    search: SearchResult | None  # the shorter path's search (None on the leaderboard path)
    published: PublishResult
    generated: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # task -> in/want/got
    board: Leaderboard | None = None  # the leaderboard path's leaderboard
    row: str | None = None  # the leaderboard row published (chosen on dev scores)
    node: str | None = None  # the published node of its run
    answers: Answers | None = None  # the published model's exact matches on the test rows
    listed_as_merge: bool = False  # the Hub's model tree lists the push under its parents
    resumed: bool = False
    seconds: float = 0.0
    peak_rss: int = 0  # bytes: the most memory this process held (the goal is <= 3 GB)
    memory: list[RssStep] = field(default_factory=list)  # RSS at the end of each step

    def comparison(self) -> Comparison:
        """The shorter path's winner against each baseline and the oracle router.

        Raises:
            ConfigError: on the leaderboard path (its comparison is ``board``).
        """
        if self.search is None:
            raise ConfigError("The demo ran the leaderboard path: read DemoResult.board.")
        return compare(self.search.tree)


def _load_or_build_zoo(config: DemoConfig) -> Zoo:
    build = build_tiny_zoo if config.quick else build_smol_zoo
    return build(config.zoo_cache, progress=config.progress)


def _pick_experts(zoo: Zoo, found: list[hub.Candidate]) -> dict[str, str]:
    """One discovered candidate per task the zoo has a dev set for, adapters first, by task name.

    The choice must not depend on listing order, or a second run would not resume the first.
    """
    by_repo = {repo: key for key, repo in zoo.repo_ids.items()}
    chosen: dict[str, str] = {}
    for kind in ("adapter", "expert"):
        for cand in found:
            key = by_repo.get(cand.id, "")
            if key.startswith(f"{kind}/"):
                task = key.split("/", 1)[1]
                if task in zoo.tasks and task not in chosen:
                    chosen[task] = cand.id
    return dict(sorted(chosen.items()))


def run_demo(config: DemoConfig, echo: Callable[[Any], None] | None = None) -> DemoResult:
    """Run the end-to-end demo; ``echo`` receives step headings and rich tables (default: rich).

    ``DemoResult.memory`` holds the resident memory at the end of each step (and of the
    compare's phases), so a peak over the demo's 3 GB goal names the step that reached it.

    Raises:
        Any HubMergeError of the steps it runs (the message says which step and what to do).
    """
    with RssLog() as log:
        result = _run_demo(config, echo, log)
    result.memory = list(log.steps)
    return result


def _run_demo(config: DemoConfig, echo: Callable[[Any], None] | None, log: RssLog) -> DemoResult:
    if echo is None:
        from rich.console import Console

        echo = Console().print
    if not config.progress:
        from huggingface_hub.utils import disable_progress_bars
        from transformers.utils import logging as hf_logging

        disable_progress_bars()  # downloads and uploads; the search and kinship obey `progress`
        hf_logging.disable_progress_bar()
    start = time.monotonic()
    out = Path(config.out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    zoo_token, user_token = f"hf_zoo_{secrets.token_hex(12)}", f"hf_demo_{secrets.token_hex(12)}"
    tokens = {zoo_token: (ZOO_USER, "write"), user_token: (DEMO_USER, "write")}
    cache_dir = out / "hf-cache"

    echo("[bold]1. The model zoo[/bold] (built once, then cached)")
    zoo = _load_or_build_zoo(config)
    echo(
        f"   {zoo.name}: base + {len(zoo.experts)} experts + {len(zoo.adapters)} adapters in {zoo.root}"
    )
    log.mark("1 zoo")

    with LocalHub(out / "hub", tokens=tokens) as server:
        endpoint = server.endpoint
        echo(f"[bold]2. A local Hub[/bold] at {endpoint} (data in {out / 'hub'})")
        seeded = upload_zoo(zoo, endpoint=endpoint, token=zoo_token, progress=config.progress)
        base_repo = seeded.base
        echo(
            f"   {len(seeded.repo_ids)} repos of {ZOO_USER}, each with its own card "
            f"({len(seeded.created)} uploaded now, {len(seeded.repo_ids) - len(seeded.created)} kept)"
        )
        log.mark("2 local Hub, zoo uploaded")

        echo(f"[bold]3. Discover[/bold] experts of {base_repo} through the Hub's model tree")
        found = hub.discover(
            base_repo, ("finetune", "adapter"), limit=50, endpoint=endpoint, token=user_token
        )
        experts = _pick_experts(zoo, found)
        for cand in found:
            mark = "->" if cand.id in experts.values() else "  "
            echo(f"   {mark} {cand.id}  ({cand.relation}, license {cand.license})")
        if len(experts) < 2:
            raise SearchStateError(
                f"The local Hub lists fewer than two usable experts of {base_repo}; delete "
                f"{out / 'hub'} and run the demo again to re-seed it."
            )

        log.mark("3 discover")
        echo("[bold]4. Pull[/bold] what a merge needs, pinned to exact commits")
        hub_kw = {"endpoint": endpoint, "token": user_token, "cache_dir": cache_dir}
        base = hub.pull(base_repo, **hub_kw)
        pulled = {task: hub.pull(repo, **hub_kw) for task, repo in experts.items()}
        for p in pulled.values():
            echo(f"   {p.repo_id}@{p.revision[:10]}  {p.kind}  -> {p.path}")

        log.mark("4 pull")
        echo("[bold]5. Kinship[/bold]: how related are the experts? (one pass over the weights)")
        kin = kinship_matrix(
            {task: p.path for task, p in pulled.items()},
            base.path,
            device=config.device,
            progress=config.progress,
        )
        echo(kin.table())
        from .plots import plot_kinship

        plot_kinship(kin, out / "kinship.png")
        log.mark("5 kinship")

        if config.leaderboard:
            return _leaderboard_demo(
                config,
                echo,
                _Stage(out, zoo, endpoint, user_token, base_repo, base.path, found, experts, kin),
                start,
            )

        title = {
            "greedy": "Kinship-guided top-k greedy merging",
            "evolve": "Evolutionary merging (CMA-ES)",
        }.get(config.strategy, f"The {config.strategy} search")
        echo(f"[bold]6. {title}[/bold] on the experts' dev rows (test rows held out)")
        if config.strategy == "greedy":
            settings: dict[str, Any] = {"k": config.k, "generations": config.generations or 2}
        elif config.strategy == "evolve":
            # global genes: the per-layer-group default (64 genes on the smol zoo, 16 per
            # generation) needs more than the demo's budget of 15-40 evaluations
            settings = {"layer_groups": 1}
        else:
            settings = {}
        budget = config.budget or (40 if config.strategy == "evolve" else None)
        run_dir = out / "run"
        resume = (run_dir / "state.json").is_file()
        search_config = SearchConfig(
            base=base_repo,
            experts=list(experts.values()),
            tasks=[str(zoo.tasks[t]) for t in experts],
            out=str(run_dir),
            strategy=config.strategy,
            settings=settings,
            budget=budget,
            limit=config.limit or (16 if config.quick else 32),
            device=config.device,
            progress=config.progress,
            resume=resume,
            endpoint=endpoint,
            token=user_token,
            cache_dir=str(cache_dir),
            # The state cache's default (a quarter of free memory) filled 5+ GB on a 24 GB box
            # for a 0.5 GB model: the demo's peak RSS was 7.4 GiB. A cache miss only costs
            # re-merging a node (about a second here), so the demo keeps one state dict (with
            # the base, the scoring model, DAM's training and torch itself that is its 3 GB;
            # two state dicts put greedy's phase alone at 3.7 GiB).
            max_memory=DEMO_CACHE_BYTES,
        )
        try:
            result = search(search_config)
        except SearchStateError:
            if not resume:
                raise
            # The folder holds a run of other settings (another zoo, a re-seeded Hub): it is the
            # demo's own scratch, so start over rather than ask the user to clean up.
            echo("   (the previous demo run used other settings; starting it over)")
            shutil.rmtree(run_dir)
            search_config.resume, resume = False, False
            result = search(search_config)
        log.mark("6 search")
        echo(
            f"   winner {result.winner} after {result.generations} generation(s) "
            f"({result.stop_reason}); {result.evaluations} evaluations"
            + (f", {result.cache_hits} reused from the earlier run" if resume else "")
        )

        echo("[bold]7. Card and push[/bold]: lineage, kinship, scores and recipe, one commit")
        repo_id = config.repo_id or f"{DEMO_USER}/{zoo.name.split('-')[0]}-merged"
        published = publish(run_dir, repo_id, endpoint=endpoint, token=user_token)
        echo(f"   {published.url}")
        # The Hub's model tree now lists the merge under the models its card names as parents.
        parent = base_models(result.tree, result.winner)[0][0]
        tree_list = hub.discover(parent, ("merge",), endpoint=endpoint, token=user_token)
        listed = any(c.id == repo_id for c in tree_list)
        log.mark("7 card and push")

        echo(f"[bold]8. Pull[/bold] {repo_id} back from the Hub and generate")
        back = hub.pull(f"{repo_id}@{published.push.commit_sha}", **hub_kw)
        generated = generate_answers(back.path, zoo.tasks, list(experts), config.device)
        log.mark("8 pull back, generate")

    return DemoResult(
        out=out,
        endpoint=endpoint,
        zoo=zoo.name,
        base=base_repo,
        discovered=found,
        experts=experts,
        kinship=kin,
        search=result,
        published=published,
        generated=generated,
        listed_as_merge=listed,
        resumed=resume,
        seconds=time.monotonic() - start,
        peak_rss=peak_rss_bytes(),
    )


@dataclass(frozen=True)
class _Stage:
    """What steps 1 to 5 found, for the rest of the demo."""

    out: Path
    zoo: Zoo
    endpoint: str
    token: str
    base_repo: str
    base_path: Path
    found: list[hub.Candidate]
    experts: dict[str, str]
    kinship: KinshipResult

    @property
    def hub_kw(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "token": self.token, "cache_dir": self.out / "hf-cache"}


def _leaderboard_demo(
    config: DemoConfig, echo: Callable[[Any], None], stage: _Stage, start: float
) -> DemoResult:
    """Steps 6 to 8 of the leaderboard path: compare, publish the row chosen on dev, answer."""
    from .lineage import FamilyTree
    from .splits import split_tasks

    zoo, out = stage.zoo, stage.out
    names = " and ".join(config.strategies)
    echo(
        f"[bold]6. The leaderboard[/bold]: {names} on the same dev rows (test rows held out), "
        "against each expert, the uniform average and the oracle router"
    )
    compare_dir = out / "compare"
    budget: Any = config.budget
    if budget is None and "evolve" in config.strategies:
        budget = {"evolve": 40}
    compare_config = CompareConfig(
        base=stage.base_repo,
        experts=list(stage.experts.values()),
        tasks=[str(zoo.tasks[t]) for t in stage.experts],
        out=str(compare_dir),
        strategies=list(config.strategies),
        budget=budget,
        settings=compare_settings(
            config.strategies,
            quick=config.quick,
            k=config.k,
            generations=config.generations,
            dam_steps=config.dam_steps,
        ),
        limit=config.limit or (16 if config.quick else 32),
        device=config.device,
        progress=config.progress,
        resume=(compare_dir / "compare.json").is_file(),
        endpoint=stage.endpoint,
        token=stage.token,
        cache_dir=str(out / "hf-cache"),
        max_memory=DEMO_CACHE_BYTES,  # why: see the shorter path's SearchConfig
    )
    resumed = compare_config.resume
    try:
        board = compare_strategies(compare_config)
    except SearchStateError:
        if not resumed:
            raise
        # another demo's compare (other settings, a re-seeded Hub): the demo's own scratch
        echo("   (the previous demo run used other settings; starting it over)")
        shutil.rmtree(compare_dir)
        compare_config.resume = resumed = False
        board = compare_strategies(compare_config)
    mark("6 compare: done")
    rec = board.recommended()
    if rec is None:
        raise SearchStateError(f"No row of {compare_dir} can be published; see leaderboard.md.")
    from .demo_board import leaderboard_table

    echo(leaderboard_table(board, rec.name))
    echo(
        f"   {board.evaluations_now} evaluations now"
        + (" (the rest reused from the earlier run)" if resumed else "")
        + f"; recommended: {rec.label}, the best on the dev rows"
    )

    echo(f"[bold]7. Card and push[/bold] of {rec.label}: the leaderboard on its card, one commit")
    repo_id = config.repo_id or f"{DEMO_USER}/{zoo.name.split('-')[0]}-merged"
    published = publish_row(compare_dir, repo_id, endpoint=stage.endpoint, token=stage.token)
    echo(f"   {published.url}")
    seed = rec.best_seed()
    tree = FamilyTree.load(compare_dir / str(seed.run) / "family_tree.json")
    node = str(seed.node)
    parent = base_models(tree, node)[0][0]
    tree_list = hub.discover(parent, ("merge",), endpoint=stage.endpoint, token=stage.token)
    listed = any(c.id == repo_id for c in tree_list)
    mark("7 card and push")

    echo(f"[bold]8. Pull[/bold] {repo_id} back from the Hub; it answers the held-out test prompts")
    import gc

    gc.collect()  # nothing of the compare (its session, backend, models) is held from here on
    return_freed_memory()
    back = hub.pull(f"{repo_id}@{published.push.commit_sha}", **stage.hub_kw)
    split = split_tasks(
        compare_config.tasks,
        test_fraction=compare_config.test_fraction,
        seed=compare_config.split_seed,
        limit=compare_config.limit,
    )
    answers = answer_test_prompts(back.path, stage.base_path, split, device=config.device)
    echo(f"   {repo_id} {answers.sentence()}")
    mark("8 pull back, answer the test prompts")
    return DemoResult(
        out=out,
        endpoint=stage.endpoint,
        zoo=zoo.name,
        base=stage.base_repo,
        discovered=stage.found,
        experts=stage.experts,
        kinship=stage.kinship,
        search=None,
        published=published,
        generated=dict(answers.examples),
        board=board,
        row=rec.name,
        node=node,
        answers=answers,
        listed_as_merge=listed,
        resumed=resumed,
        seconds=time.monotonic() - start,
        peak_rss=peak_rss_bytes(),
    )


def final_table(result: DemoResult) -> Any:
    """The demo's last table: the leaderboard on the test rows, or the shorter path's comparison."""
    if result.board is not None:
        return held_out_table(result.board, result.row)
    return summary_table(result)


def summary_table(result: DemoResult) -> Any:
    """A rich Table of the run's comparison (see :func:`comparison_table`)."""
    return comparison_table(result.comparison())
