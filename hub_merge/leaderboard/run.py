"""``compare_strategies``: every strategy on one split, one backend and one score cache.

Layout of the compare folder ``RUN/``::

    compare.json          the shared inputs (fingerprinted: a resume must be given the same)
    scores.json ...       the ONE score, test-score and kinship cache every run reads and fills
    <row>-seed<N>/        one search run folder per strategy and seed (resumable on its own)
        row.json          written when the run finished: what it cost (the row is kept)
    moe/, moa/            the MoE and MoA rows (``--moe``, ``--moa``), each with its row.json
    exact_match.json      exact match on the test rows, per model (cached like the scores)
    leaderboard.md/.json/.png

The models are pulled once, the dev/test split is made once, the baselines (each expert, the
uniform average, the oracle router) are scored once (by the first run; every later run finds
them in the shared cache), and every strategy's candidates go through the same backend. A
Ctrl-C keeps the finished rows (their ``row.json`` and the leaderboard so far); ``resume=True``
skips them and resumes the unfinished run from its own checkpoint, so nothing is scored twice.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_json
from ..comparison import ComparisonRow
from ..comparison import compare as compare_tree
from ..dam.data import rows_drawn
from ..errors import SearchStateError
from ..lineage import FamilyTree
from ..rss import mark, return_freed_memory
from .alternatives import moa_row, moe_row
from .board import BoardRow, Leaderboard, SeedResult
from .config import CompareConfig, RunSpec, row_title

logger = logging.getLogger(__name__)

ROW_RECORD = "row.json"


def compare_strategies(config: CompareConfig) -> Leaderboard:
    """Run every strategy (and MoE, MoA) on the same inputs; write and return the leaderboard.

    Raises:
        ConfigError, TaskFileError: bad input, before anything is pulled or scored.
        SearchStateError: a compare folder made with other inputs, or one started without
            ``resume``.
        KeyboardInterrupt: after keeping the finished rows; resume with ``resume=True``.

    >>> board = compare_strategies(CompareConfig(base="zoo/base", experts=["a", "b"],
    ...     tasks=["a.jsonl", "b.jsonl"], out="cmp", strategies=["greedy", "evolve"]))  # doctest: +SKIP
    >>> board.recommended().name  # doctest: +SKIP
    'dam'
    """
    from ..search.config import check_config

    runs = config.check()
    checked = {spec.folder: check_config(config.search_config(spec)) for spec in runs}
    root = Path(config.out)
    _open_root(root, config)
    engine = _Engine(config, checked[runs[0].folder])
    mark("compare: models, evaluators, backend")
    try:
        return _Compare(config, runs, checked, root, engine).run()
    finally:
        engine.close()


class _Engine:
    """The models, the split's evaluators and the backend, built once for every run."""

    def __init__(self, config: CompareConfig, checked: Any) -> None:
        from transformers import AutoTokenizer

        from ..merge import MergeSession
        from ..search.api import default_max_memory
        from ..search.evaluators import build_backend, build_evaluators
        from ..search.resolve import pull_models

        shared = config.search_config()
        self.models = pull_models(shared)
        self.session = MergeSession(self.models.base.path, device=config.device)
        self.tokenizer = AutoTokenizer.from_pretrained(self.models.base.path)
        self.evaluators = build_evaluators(shared, checked, self.tokenizer, self.session.device)
        max_memory = checked.max_memory
        if max_memory is None:
            max_memory = default_max_memory(self.session)
        self.backend, self.pool = build_backend(
            shared, checked, self.models, self.session, self.evaluators, max_memory
        )
        self.base_params = sum(t.numel() for t in self.session.base.state.values())

    def release(self) -> None:
        """Free what the last row held: the backend's state dicts and the scoring model.

        One backend serves every row, so without this the cache a search filled (up to
        ``max_memory``) and the scoring model would still be held while the next strategy
        trains (DAM holds its own module and activations), and the compare's peak would grow
        with each row instead of being the largest row's.
        """
        import gc

        self.backend.release()
        gc.collect()  # the in-place model and the backend refer to each other: free it now
        return_freed_memory()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
        self.release()


class _Compare:
    def __init__(
        self,
        config: CompareConfig,
        runs: list[RunSpec],
        checked: dict[str, Any],
        root: Path,
        engine: _Engine,
    ) -> None:
        from ..evaluate import ScoreCache

        self.config = config
        self.runs = runs  # every (row, seed), in order; the first also scores the baselines
        self.checked = checked  # run folder name -> CheckedConfig
        self.root = root
        self.engine = engine
        self.evaluations = 0  # scored by this call: candidates, MoE/MoA, exact-match models
        self.em_cache = ScoreCache(root / "exact_match.json")
        self.split = engine.evaluators.split
        self.dev_rows = sum(len(t.examples) for t in self.split.dev)

    def run(self) -> Leaderboard:
        total = len(self.runs) + int(self.config.moe) + int(self.config.moa)
        for i, spec in enumerate(self.runs, 1):
            self._say(f"[{i}/{total}] {row_title(spec.row)}, seed {spec.seed}")
            self._strategy(spec, first=i == 1)
            # nothing of a finished row is held while the leaderboard scores its model or the
            # next row runs
            self.engine.release()
            mark(f"compare: {spec.folder}")
            self.board().write(self.root)
            self.engine.release()  # the leaderboard's exact-match model
            mark(f"compare: leaderboard after {spec.folder}")
        extra = [(self.config.moe, "moe", moe_row), (self.config.moa, "moa", moa_row)]
        done = len(self.runs)
        for wanted, name, build in extra:
            if not wanted:
                continue
            done += 1
            self._say(f"[{done}/{total}] {name}")
            self._alternative(name, build)
            self.board().write(self.root)
            self.engine.release()
        board = self.board()
        board.write(self.root)
        return board

    def _say(self, text: str) -> None:
        """One line per row before its own display (the run's generation bars, DAM's steps)."""
        from ..progress import is_quiet

        if self.config.progress and not is_quiet():
            import click

            click.echo(text, err=True)

    # -- one strategy run ------------------------------------------------------------------

    def _strategy(self, spec: RunSpec, *, first: bool) -> None:
        from ..search.api import run_checked

        folder = self.root / spec.folder
        if _finished(folder, spec):
            return  # finished by an earlier call with these settings: kept as it is
        started = (folder / "state.json").is_file()
        if started and not self.config.resume:
            raise SearchStateError(f"{folder} holds an unfinished run; pass --resume to finish it.")
        cfg = self.config.search_config(spec, resume=started)
        if first:  # the uniform average as a model folder: publishable, scored for exact match
            cfg.materialize = ["winner", "uniform"]
        t0 = time.perf_counter()
        result = run_checked(
            cfg,
            self.checked[spec.folder],
            self.engine.models,
            self.engine.session,
            self.engine.backend,
            self.engine.evaluators,
            caches=self.root,
        )
        self.evaluations += result.evaluations
        tree = result.tree
        steps = sum(int(g.stats.get("gradient_steps") or 0) for g in tree.generations)
        train_rows = 0
        if spec.train:  # the training rows DAM's steps drew, of at most max_rows per expert
            settings = self.checked[spec.folder].settings
            cap = getattr(settings, "max_rows", None)
            sizes = [len(t.examples) for t in self.checked[spec.folder].train]
            train_rows = sum(
                rows_drawn(
                    n if cap is None else min(n, cap),
                    settings.train_batch_size,
                    seed=spec.seed,
                    expert=k,
                    steps=steps,
                    grad_accum=settings.grad_accum,
                )
                for k, n in enumerate(sizes)
            )
        atomic_write_json(
            folder / ROW_RECORD,
            {
                "row": spec.row,
                "seed": spec.seed,
                "spec": _spec(spec),
                "node": tree.winner,
                "evaluations": sum(1 for n in tree.nodes.values() if n.fitness is not None),
                "computed": result.evaluations,
                "train_steps": steps,
                "train_rows": train_rows,
                "wall_s": round(time.perf_counter() - t0, 3),
            },
        )

    def _alternative(self, name: str, build: Any) -> None:
        folder = self.root / name
        if (folder / ROW_RECORD).is_file():
            return
        row = build(self, folder)
        self.evaluations += 1
        atomic_write_json(folder / ROW_RECORD, row.to_dict())

    def fitness(self, scores: dict[str, float]) -> float | None:
        """Per-task scores as the search ranks them (weights, combine rule, direction)."""
        from ..evaluate import fitness_from_scores

        run = self.checked[self.runs[0].folder].run
        if not scores:
            return None
        return fitness_from_scores(scores, run.metric, run.weights or None, run.combine)

    # -- exact match ----------------------------------------------------------------------

    def exact_match(self, key: str, load: Any) -> dict[str, float]:
        """Exact match on the test rows of the model ``load()`` returns, cached under ``key``."""
        if not self.config.exact_match or not self.split.test:
            return {}
        found = self.em_cache.get(key)
        if found is not None:
            return found
        from ..evaluate import Evaluator

        evaluator = Evaluator(
            self.split.test,
            self.engine.tokenizer,
            metric="exact_match",
            batch_size=self.config.batch_size,
            device=self.engine.session.device,
        )
        scores = evaluator.score(load())
        return_freed_memory()  # the loaded model's weights and the activations
        self.evaluations += 1
        self.em_cache.put(key, scores)
        return scores

    def folder_model(self, folder: Path) -> Any:
        """A model folder (full model or adapter of the base) as the session's one model."""
        session = self.engine.session
        handle = session.load(folder)
        if handle.state is not None:
            state = handle.state
        else:
            state = {k: handle.tensor(k, session.device) for k in session.names}
        return session.to_model(state)

    def _folder_em(self, key: str, folder: Path | None) -> dict[str, float]:
        if folder is None or not folder.is_dir():
            return {}
        marker = folder.parent / f"{folder.name}.recipe.json"
        digest = marker.read_text() if marker.is_file() else ""
        import hashlib

        key = f"{key}|{hashlib.sha256(digest.encode()).hexdigest()[:16]}"
        return self.exact_match(key, lambda: self.folder_model(folder))

    # -- the leaderboard -------------------------------------------------------------------

    def board(self) -> Leaderboard:
        """The leaderboard of the rows finished so far (read back from the run folders)."""
        by_row: dict[str, list[tuple[RunSpec, FamilyTree, dict[str, Any]]]] = {}
        for spec in self.runs:
            folder = self.root / spec.folder
            if _finished(folder, spec):
                record = json.loads((folder / ROW_RECORD).read_text())
                tree = FamilyTree.load(folder / "family_tree.json")
                by_row.setdefault(spec.row, []).append((spec, tree, record))
        first_tree = next((t for rows in by_row.values() for _, t, _ in rows), None)
        rows: list[BoardRow] = []
        for name, found in by_row.items():
            seeds = []
            for spec, tree, record in found:
                subject = compare_tree(tree).subject()
                model = self.root / spec.folder / "winner"
                seeds.append(
                    _seed(
                        subject,
                        seed=spec.seed,
                        em=self._folder_em(f"{spec.folder}/winner", model),
                        record=record,
                        run=spec.folder,
                        model=f"{spec.folder}/winner",
                    )
                )
            spec = found[0][0]
            strategy_cls = self.checked[spec.folder].strategy_cls
            trains = strategy_cls.reads_train_rows
            rows.append(
                BoardRow(
                    name=name,
                    kind="strategy",
                    label=row_title(name),
                    seeds=seeds,
                    dev_rows=self.dev_rows,
                    train_rows=int(found[0][2].get("train_rows") or 0),
                    task_map=trains,  # e.g. DAM distils each expert on its own task's rows
                    params=self.engine.base_params,
                    active_params=self.engine.base_params,
                    calls_per_query=1,
                )
            )
        if first_tree is not None:
            rows += self._baselines(first_tree)
        for name in ("moe", "moa"):
            record = self.root / name / ROW_RECORD
            if record.is_file():
                rows.append(BoardRow.from_dict(json.loads(record.read_text())))
        cmp = compare_tree(first_tree) if first_tree is not None else None
        return Leaderboard(
            metric=cmp.metric if cmp else self.config.metric,
            combine=cmp.combine if cmp else self.config.combine,
            weights=dict(cmp.weights) if cmp else dict(self.config.weights),
            tasks=list(cmp.tasks) if cmp else [t.name for t in self.split.dev],
            rows=rows,
            split_description=cmp.split_description if cmp else None,
            evaluations_now=self.evaluations,
        )

    def _baselines(self, tree: FamilyTree) -> list[BoardRow]:
        """Each expert, the uniform average and the oracle router, as ``search`` reports them."""
        cmp = compare_tree(tree)
        found = [r for r in cmp.rows if r.role in ("expert", "uniform", "oracle")]
        subject = cmp.subject()
        if subject.id == "uniform":  # the strategy kept the average: it is still the baseline
            found.insert(sum(r.role == "expert" for r in found), subject)
        first = self.runs[0].folder
        folders = {e.name: Path(p.path) for e, p in zip(
            self.engine.models.experts, self.engine.models.pulled, strict=True)}  # fmt: skip
        # an expert's exact match is cached under its content (a retrained folder is scored again)
        models = self.engine.models
        ids = {e.name: models.fingerprints.get(e.source, e.source) for e in models.experts}
        rows = []
        for r in found:
            if r.role == "oracle":  # exact match too: each task by its own expert's answers
                em = {}
                for task, expert in r.routes.items():
                    key = f"expert:{ids.get(expert)}"
                    scores = self._folder_em(key, folders.get(expert))
                    if task in scores:
                        em[task] = scores[task]
                rows.append(
                    BoardRow(
                        name="oracle",
                        kind="oracle",
                        label="oracle router",
                        seeds=[_seed(r, em=em)],
                        dev_rows=self.dev_rows,
                        task_map=True,
                        calls_per_query=1,
                        note="each task answered by its own expert (the task is known)",
                    )
                )
                continue
            is_uniform = r.id == "uniform"
            model = (self.root / first / "nodes" / "uniform") if is_uniform else folders.get(r.id)
            key = f"{first}/nodes/uniform" if is_uniform else f"expert:{ids.get(r.id)}"
            rows.append(
                BoardRow(
                    name=r.id,
                    kind="uniform" if is_uniform else "expert",
                    label="uniform average" if is_uniform else r.id,
                    seeds=[
                        _seed(
                            r,
                            em=self._folder_em(key, model),
                            run=first if is_uniform else None,
                            model=f"{first}/nodes/uniform" if is_uniform else None,
                        )
                    ],
                    params=self.engine.base_params,
                    active_params=self.engine.base_params,
                    calls_per_query=1,
                )
            )
        return rows


def _spec(spec: RunSpec) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(spec), sort_keys=True))


def _finished(folder: Path, spec: RunSpec) -> bool:
    """Whether the run finished with this spec (another budget or settings: resume it)."""
    path = folder / ROW_RECORD
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("spec") == _spec(spec)
    except json.JSONDecodeError:
        return False


def _seed(
    row: ComparisonRow,
    *,
    seed: int | None = None,
    em: dict[str, float] | None = None,
    record: dict[str, Any] | None = None,
    run: str | None = None,
    model: str | None = None,
) -> SeedResult:
    record = record or {}
    return SeedResult(
        seed=seed,
        dev=dict(row.dev),
        test=dict(row.test),
        dev_fitness=row.dev_fitness,
        test_fitness=row.test_fitness,
        exact_match=dict(em or {}),
        evaluations=int(record.get("evaluations") or 0),
        train_steps=int(record.get("train_steps") or 0),
        wall_s=float(record.get("wall_s") or 0.0),
        run=run,
        node=row.id if run else None,
        model=model,
    )


def _open_root(root: Path, config: CompareConfig) -> None:
    """Record the shared inputs; refuse another compare's folder, or a restart over one."""
    path = root / "compare.json"
    wanted = config.fingerprint_data()
    if path.is_file():
        try:
            found = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise SearchStateError(f"{path} is corrupt ({err}); use a new --out.") from err
        if found != json.loads(json.dumps(wanted)):
            diff = sorted(k for k in set(wanted) | set(found) if found.get(k) != wanted.get(k))
            raise SearchStateError(
                f"{root} holds a compare of other inputs (differs in: {', '.join(diff)}); use "
                "the same inputs to resume, or a new --out."
            )
        if not config.resume:
            raise SearchStateError(
                f"{root} already holds a compare; pass --resume to finish it or choose another "
                "--out."
            )
        return
    if config.resume:
        raise SearchStateError(
            f"No compare to resume in {root} (no compare.json); drop --resume to start one."
        )
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, wanted)
